"""The oracle boundary: a budget keeper that counts and records every call.

The keeper is the only place the oracle is called. It retries faulty calls under
an :class:`OraclePolicy`, spends budget only on calls that return valid rewards,
writes every such call to an optional :class:`~banel_jax.runtime.ledger.Ledger` before
using it, and can answer calls from an earlier ledger instead of the oracle (how
a resumed run replays what was already paid for).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json
import math
import os
import threading
import time
from typing import Any, Sequence

import numpy as np

from banel_jax.core.config import ConfigError
from banel_jax.runtime.ledger import (Ledger, LedgerCall, ReplayMismatchError,
                              encode_queries)
from banel_jax.core.types import Oracle


class OracleError(RuntimeError):
  """The oracle failed: invalid output, or every attempt of a call faulted.

  Raised by :func:`validate_rewards` for output that is not one reward in {0, 1}
  per query, and by :class:`BudgetKeeper` when a call failed
  ``OraclePolicy.max_attempts`` times; then :attr:`faults` lists each attempt's
  fault and the message names them.
  """

  faults: tuple = ()


@dataclasses.dataclass
class Success:
  """A sample the oracle accepted during training."""

  seed_index: int
  round: int
  sample: Any


def validate_rewards(rewards, n: int) -> np.ndarray:
  """Checks an oracle's output and returns it as ``float32[n]``.

  Raises:
    OracleError: wrong shape or type, non-finite values, or values not in {0, 1}.
  """
  try:
    r = np.asarray(rewards)
  except Exception as e:  # pragma: no cover - exotic return types
    raise OracleError(f"oracle returned {type(rewards).__name__}, not an array: {e}")
  if r.shape != (n,):
    raise OracleError(f"oracle returned shape {r.shape} for {n} queries; expected ({n},)")
  # complex is a number type too, but casting it would drop the imaginary part
  if not (np.issubdtype(r.dtype, np.integer) or np.issubdtype(r.dtype, np.floating)
          or r.dtype == bool):
    raise OracleError(f"oracle returned dtype {r.dtype}; expected numbers in {{0, 1}}")
  r = r.astype(np.float64)
  if not np.all(np.isfinite(r)):
    raise OracleError(f"oracle returned {int((~np.isfinite(r)).sum())} non-finite "
                      "rewards (NaN or inf)")
  bad = (r != 0) & (r != 1)
  if np.any(bad):
    raise OracleError(f"oracle returned values outside {{0, 1}}, e.g. {r[bad][:3]}")
  return r.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class OraclePolicy:
  """How the budget keeper retries a faulty oracle.

  A call *fails* when the oracle raises an ``Exception``, returns something that
  is not one reward in {0, 1} per query (wrong shape or dtype, NaN, other values),
  or does not return within ``timeout_s``. A failed attempt spends no budget and
  is never recorded in the ledger; the call is retried after a pause of
  ``backoff_s * backoff_factor ** (attempt - 1)`` seconds (at most
  ``max_backoff_s``). After ``max_attempts`` failed attempts the keeper raises an
  :class:`OracleError` that names every fault.

  Attributes:
    max_attempts: attempts per call (``>= 1``; 1 means no retry).
    timeout_s: seconds an attempt may take, or ``None`` for no limit. With a
      limit the oracle runs in a worker thread; a timed-out attempt is abandoned
      (Python cannot stop a thread: it runs on in the background and its result
      is dropped), so the oracle may see the same batch again while the
      abandoned attempt still runs.
    backoff_s: pause before the first retry.
    backoff_factor: growth of the pause per retry (``>= 1``).
    max_backoff_s: cap on the pause.
  """

  max_attempts: int = 3
  timeout_s: float | None = None
  backoff_s: float = 1.0
  backoff_factor: float = 2.0
  max_backoff_s: float = 60.0

  def __post_init__(self):
    def require(ok, name, what):
      if not ok:
        raise ConfigError(f"OraclePolicy.{name}={getattr(self, name)!r} is invalid: "
                          f"{what}")

    def number(v):
      return (isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v))

    n = self.max_attempts
    require(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
            "max_attempts", "expected an integer >= 1")
    require(self.timeout_s is None or (number(self.timeout_s) and self.timeout_s > 0),
            "timeout_s", "expected None or a finite number of seconds > 0")
    require(number(self.backoff_s) and self.backoff_s >= 0, "backoff_s",
            "expected a finite number of seconds >= 0")
    require(number(self.backoff_factor) and self.backoff_factor >= 1,
            "backoff_factor", "expected a finite number >= 1")
    require(number(self.max_backoff_s) and self.max_backoff_s >= 0, "max_backoff_s",
            "expected a finite number of seconds >= 0")

  def backoff(self, attempt: int) -> float:
    """Pause in seconds after failed attempt number ``attempt`` (1-based)."""
    pause = self.backoff_s * self.backoff_factor ** (attempt - 1)
    return min(self.max_backoff_s, pause)


class _Timeout(Exception):
  pass


def takes_request_id(oracle) -> bool:
  """Whether ``oracle`` accepts a ``request_id`` keyword argument."""
  try:
    params = inspect.signature(oracle).parameters.values()
  except (TypeError, ValueError):  # builtins and the like
    return False
  return any(p.name == "request_id" or p.kind is inspect.Parameter.VAR_KEYWORD
             for p in params)


def _call_with_timeout(oracle: Oracle, x: np.ndarray, timeout_s: float | None,
                       kwargs: dict):
  if timeout_s is None:
    return oracle(x, **kwargs)
  box: dict[str, Any] = {}

  def work():
    try:
      box["value"] = oracle(x, **kwargs)
    except BaseException as e:  # handed to the caller's thread
      box["error"] = e

  worker = threading.Thread(target=work, name="banel-oracle", daemon=True)
  worker.start()
  worker.join(timeout_s)
  if worker.is_alive():
    raise _Timeout(f"timed out after {timeout_s:g} s")
  if "error" in box:
    raise box["error"]
  return box["value"]


def _describe(e: BaseException) -> str:
  if isinstance(e, _Timeout):
    return str(e)
  if isinstance(e, OracleError):
    return f"returned invalid output ({e})"
  return f"raised {type(e).__name__}: {e}"


class BudgetKeeper:
  """Wraps a batched host oracle; never spends past each seed's budget.

  Training calls (:meth:`evaluate`) count against ``budget`` per seed; a request
  for more than what is left is cut to fit, and the cut samples are marked not
  evaluated. Evaluation calls (:meth:`evaluate_free`) are counted apart and never
  limited. Successes found in training are kept in :attr:`successes`.

  Every call goes through the fault ``policy`` (retries, timeout); only a call
  that returns valid rewards spends budget. With a ``ledger``, the rewards are
  appended to it (and fsync-ed) before they are returned. Calls queued with
  :meth:`set_replay` are answered from an earlier ledger instead of the oracle,
  after checking that the same queries are asked.

  Args:
    oracle: ``oracle(x) -> rewards`` on a numpy batch ``[n, *event_shape]``.
    budget: NRE per seed.
    num_seeds: number of seeds sharing this oracle.
    policy: the :class:`OraclePolicy` (default ``OraclePolicy()``).
    ledger: optional :class:`~banel_jax.runtime.ledger.Ledger` recording every call.
    seeds: seed values written to the ledger (default ``0..num_seeds-1``).
    run_id: the run's identifier in request ids (default ``"run"``).

  Request ids: every call has a stable id ``<run_id>:<kind>:<round>:<call>``,
  written to the ledger. An oracle that takes a ``request_id`` keyword (or
  ``**kwargs``) is called as ``oracle(x, request_id=...)``, the same id for every
  retry of a call and for the call a resumed run asks again after a crash
  between the oracle's answer and the ledger's write. A paid service that keeps
  its answers by request id (an idempotency key) then charges each call once
  (:class:`IdempotentOracle` shows the pattern).

  Example:
    >>> import numpy as np
    >>> keeper = BudgetKeeper(lambda x: (x % 2).astype(np.float32), budget=3)
    >>> rewards, evaluated = keeper.evaluate(np.array([[1, 2, 3, 4]]))
    >>> rewards.tolist(), evaluated.tolist(), keeper.spent.tolist()
    ([[1.0, 0.0, 1.0, 0.0]], [[True, True, True, False]], [3])
  """

  def __init__(self, oracle: Oracle, budget: int, num_seeds: int = 1, *,
               policy: OraclePolicy | None = None, ledger: Ledger | None = None,
               seeds: Sequence[int] | None = None, run_id: str = "run"):
    if (isinstance(budget, bool) or not isinstance(budget, (int, np.integer))
        or budget < 0):
      raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) \
        or num_seeds < 1:
      raise ValueError(f"num_seeds must be an integer >= 1, got {num_seeds!r}")
    if not callable(oracle):
      raise TypeError(f"oracle must be callable, got {type(oracle).__name__}")
    self.oracle = oracle
    self._kwargs_by_id = takes_request_id(oracle)
    self.run_id = str(run_id)
    self.budget = int(budget)
    self.num_seeds = int(num_seeds)
    self.policy = OraclePolicy() if policy is None else policy
    if not isinstance(self.policy, OraclePolicy):
      raise TypeError(f"policy must be an OraclePolicy, got {type(policy).__name__}")
    self.ledger = ledger
    self.seeds = np.arange(self.num_seeds) if seeds is None else np.asarray(seeds)
    if self.seeds.shape != (self.num_seeds,):
      raise ValueError(f"seeds must list {self.num_seeds} seeds, got {list(seeds)}")
    self.spent = np.zeros(self.num_seeds, np.int64)
    self.eval_calls = 0
    self.oracle_calls = 0
    self.failed_attempts = 0
    self.replayed_calls = 0
    self.successes: list[Success] = []
    self._replay: collections.deque[LedgerCall] = collections.deque()
    # (calls, byte offset) of the ledger used so far: where a resume would start
    self.ledger_position = (0, 0) if ledger is None else (ledger.num_calls,
                                                          ledger.offset)

  @property
  def remaining(self) -> np.ndarray:
    return self.budget - self.spent

  @property
  def exhausted(self) -> bool:
    return bool(np.all(self.remaining <= 0))

  @property
  def pending_replay(self) -> int:
    """Ledgered calls queued for replay and not asked for yet."""
    return len(self._replay)

  def set_replay(self, calls: Sequence[LedgerCall], start: tuple[int, int]) -> None:
    """Queues ledgered calls to be answered, in order, instead of the oracle.

    Args:
      calls: complete calls read from the ledger, in order.
      start: ``(calls, byte offset)`` of the ledger just before ``calls[0]``.
    """
    self._replay = collections.deque(calls)
    self.ledger_position = (int(start[0]), int(start[1]))

  # --- state --------------------------------------------------------------------

  def state_dict(self) -> dict:
    """The counters and successes, JSON-ready (for checkpoints)."""
    return {"budget": self.budget, "num_seeds": self.num_seeds,
            "spent": self.spent.tolist(), "eval_calls": int(self.eval_calls),
            "oracle_calls": int(self.oracle_calls),
            "failed_attempts": int(self.failed_attempts),
            "successes": [dataclasses.asdict(s) for s in self.successes]}

  def load_state_dict(self, state: dict) -> None:
    """Restores what :meth:`state_dict` returned."""
    if state["budget"] != self.budget or state["num_seeds"] != self.num_seeds:
      raise ValueError(f"saved keeper has budget {state['budget']} and "
                       f"{state['num_seeds']} seeds; this one has {self.budget} and "
                       f"{self.num_seeds}")
    self.spent = np.asarray(state["spent"], np.int64).reshape(self.num_seeds)
    self.eval_calls = int(state["eval_calls"])
    self.oracle_calls = int(state["oracle_calls"])
    self.failed_attempts = int(state.get("failed_attempts", 0))
    self.successes = [Success(**s) for s in state["successes"]]

  # --- calls --------------------------------------------------------------------

  def request_id(self, kind: str, round_index: int) -> str:
    """The id of the next call: ``<run_id>:<kind>:<round>:<call>``."""
    call = self.ledger.num_calls if self.ledger is not None else self.oracle_calls
    return f"{self.run_id}:{kind}:{int(round_index)}:{call}"

  def _ask(self, x: np.ndarray, kind: str, round_index: int,
           request_id: str) -> np.ndarray:
    """The oracle's validated rewards, under the fault policy."""
    p = self.policy
    faults = []
    kwargs = {"request_id": request_id} if self._kwargs_by_id else {}
    for attempt in range(1, p.max_attempts + 1):
      try:
        raw = _call_with_timeout(self.oracle, x, p.timeout_s, kwargs)
        return validate_rewards(raw, x.shape[0])
      except Exception as e:  # noqa: BLE001 - any oracle fault is retried
        self.failed_attempts += 1
        faults.append(f"attempt {attempt} {_describe(e)}")
        if attempt < p.max_attempts:
          time.sleep(p.backoff(attempt))
    err = OracleError(
        f"oracle fault on the {kind} call of round {round_index} ({x.shape[0]} "
        f"queries): {p.max_attempts} of {p.max_attempts} attempts failed: "
        + "; ".join(faults))
    err.faults = tuple(faults)
    raise err

  def _replayed(self, x: np.ndarray, kind: str, round_index: int,
                seed_index: np.ndarray) -> np.ndarray:
    call = self._replay[0]
    seeds = self.seeds[seed_index]
    rows = encode_queries(x)
    problems = []
    if call.kind != kind:
      problems.append(f"kind is {call.kind!r} in the ledger, {kind!r} now")
    if call.round != round_index:
      problems.append(f"round is {call.round} in the ledger, {round_index} now")
    if len(call.queries) != len(rows):
      problems.append(f"{len(call.queries)} queries in the ledger, {len(rows)} now")
    elif not np.array_equal(call.seeds, seeds):
      i = int(np.flatnonzero(call.seeds != seeds)[0])
      problems.append(f"query {i} is from seed {call.seeds[i]} in the ledger, seed "
                      f"{seeds[i]} now")
    else:
      diff = [i for i, (a, b) in enumerate(zip(call.queries, rows)) if a != b]
      if diff:
        i = diff[0]
        problems.append(f"{len(diff)} queries differ, first query {i} of seed "
                        f"{seeds[i]}: {call.queries[i]} in the ledger, {rows[i]} now")
    if problems:
      raise ReplayMismatchError(
          f"replaying ledger call {call.call} ({call.kind}, round {call.round}) for "
          f"the resumed run's {kind} call of round {round_index}: "
          + "; ".join(problems)
          + ". Runs are deterministic given their seeds, so the run directory was "
          "written with other code, model, data or settings.")
    self._replay.popleft()
    self.replayed_calls += 1
    self.ledger_position = (call.call + 1, call.end_offset)
    return call.rewards.copy()

  def _call(self, x: np.ndarray, kind: str = "eval", round_index: int = 0,
            seed_index: np.ndarray | None = None) -> np.ndarray:
    if seed_index is None:
      seed_index = np.zeros(x.shape[0], np.int64)
    if self._replay:
      r = self._replayed(x, kind, round_index, seed_index)
    else:
      request_id = self.request_id(kind, round_index)
      r = self._ask(x, kind, round_index, request_id)
      if self.ledger is not None:
        self.ledger.append(kind, round_index, self.seeds[seed_index], x, r,
                           request_id=request_id)
        self.ledger_position = (self.ledger.num_calls, self.ledger.offset)
    self.oracle_calls += 1
    return r

  @staticmethod
  def _check_samples(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
      raise ValueError(f"{what} have dtype {x.dtype}; expected numbers (samples of a "
                       "model)")
    return x

  def evaluate(self, x, round_index: int = 0,
               active=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores training samples ``x[S, m, ...]`` within the budget.

    All seeds' allowed samples go to the oracle in one call.

    Args:
      x: ``[num_seeds, m, *event_shape]`` samples, one row per seed.
      round_index: rounds completed by the proposal that drew ``x`` (recorded with
        successes and in the ledger).
      active: optional ``bool[num_seeds]``; a seed marked ``False`` (e.g. one
        that froze) has none of its samples scored and spends nothing.

    Returns:
      ``(rewards f32[S, m], evaluated bool[S, m])``; unscored slots get reward 0.

    Raises:
      ValueError: ``x`` is not ``[num_seeds, m, ...]`` numbers.
      OracleError: the oracle failed ``policy.max_attempts`` times; no budget spent.
    """
    x = self._check_samples(x, "training samples")
    if x.ndim < 2 or x.shape[0] != self.num_seeds:
      raise ValueError(f"expected samples of shape [num_seeds={self.num_seeds}, m, ...],"
                       f" got {x.shape}")
    m = x.shape[1]
    allowed = np.clip(self.remaining, 0, m).astype(int)
    if active is not None:
      active = np.asarray(active, bool)
      if active.shape != (self.num_seeds,):
        raise ValueError(f"active must be bool[{self.num_seeds}], got shape "
                         f"{active.shape}")
      allowed = np.where(active, allowed, 0)
    rewards = np.zeros((self.num_seeds, m), np.float32)
    evaluated = np.zeros((self.num_seeds, m), bool)
    if allowed.sum() == 0:
      return rewards, evaluated
    batch = np.concatenate([x[s, :allowed[s]] for s in range(self.num_seeds)], axis=0)
    seed_index = np.repeat(np.arange(self.num_seeds), allowed)
    r = self._call(batch, "train", round_index, seed_index)
    offset = 0
    for s in range(self.num_seeds):
      k = allowed[s]
      rewards[s, :k] = r[offset:offset + k]
      evaluated[s, :k] = True
      for i in np.flatnonzero(r[offset:offset + k] > 0.5):
        self.successes.append(Success(s, round_index, x[s, i].tolist()))
      offset += k
    self.spent += allowed
    return rewards, evaluated

  def evaluate_free(self, x, round_index: int = 0, seed_index=None) -> np.ndarray:
    """Scores evaluation samples ``x[n, ...]``; counted apart, never limited.

    Args:
      x: ``[n, *event_shape]`` samples.
      round_index: rounds completed by the sampler (for the ledger).
      seed_index: optional ``int[n]`` seed index of each sample (for the ledger;
        default 0).

    Returns:
      ``f32[n]`` rewards.
    """
    x = self._check_samples(x, "evaluation samples")
    if x.ndim < 1 or x.shape[0] == 0:
      raise ValueError(f"expected a non-empty batch [n, ...], got shape {x.shape}")
    if seed_index is not None:
      seed_index = np.asarray(seed_index)
      if seed_index.shape != (x.shape[0],) or not np.issubdtype(seed_index.dtype,
                                                                 np.integer):
        raise ValueError(f"seed_index must be int[{x.shape[0]}], got "
                         f"{seed_index.dtype}{list(seed_index.shape)}")
      if np.any((seed_index < 0) | (seed_index >= self.num_seeds)):
        raise ValueError(f"seed_index must lie in [0, {self.num_seeds})")
    r = self._call(x, "eval", round_index, seed_index)
    self.eval_calls += x.shape[0]
    return r


class IdempotentOracle:
  """A paid oracle that charges each request id once: the service side of request ids.

  ``IdempotentOracle(score, store)`` calls ``score(x)`` (the paid evaluation) for
  a request id it has not seen, appends ``{"request": id, "rewards": [...]}`` to
  the JSON-lines file ``store`` (flushed and ``fsync``-ed), and answers a
  request id already in ``store`` from it without calling ``score``. A real
  service keeps such a table on its side; this class is that pattern in a few
  lines, for tests and for wrapping a local expensive scorer.

  Attributes:
    charged: calls of ``score`` made by this object.
    answered_from_store: requests answered from ``store``.

  Example:
    >>> import os, tempfile, numpy as np
    >>> store = os.path.join(tempfile.mkdtemp(), "service.jsonl")
    >>> oracle = IdempotentOracle(lambda x: (x % 2).astype(np.float32), store)
    >>> oracle(np.array([1, 2]), request_id="r:train:0:0").tolist()
    [1.0, 0.0]
    >>> oracle(np.array([1, 2]), request_id="r:train:0:0").tolist()
    [1.0, 0.0]
    >>> oracle.charged, oracle.answered_from_store
    (1, 1)
  """

  def __init__(self, score, store: str):
    self.score = score
    self.store = str(store)
    self.charged = 0
    self.answered_from_store = 0

  def _known(self) -> dict:
    known = {}
    if os.path.exists(self.store):
      with open(self.store) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except ValueError:  # a torn last line: that charge was never answered
            continue
          known[rec["request"]] = rec["rewards"]
    return known

  def __call__(self, x, request_id: str | None = None):
    if request_id is not None:
      known = self._known().get(request_id)
      if known is not None:
        self.answered_from_store += 1
        return np.asarray(known, np.float32)
    rewards = np.asarray(self.score(x), np.float32)
    self.charged += 1
    if request_id is not None:
      with open(self.store, "a") as f:
        f.write(json.dumps({"request": request_id, "rewards": rewards.tolist()}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return rewards
