"""The oracle ledger: every paid-for evaluation, on disk before it is used.

Each oracle call that returns valid rewards is appended to a JSON-lines file, one
line per query, then flushed and ``fsync``-ed *before* the rewards go back to the
caller. A line reads::

  {"call": 3, "kind": "train", "round": 1, "seed": 0, "query": [7], "reward": 0,
   "n": 20, "time": 1718000000.123456, "request": "5f0c2a9e1b7d:train:1:3",
   "check": "9a0f3c1e"}

* ``call``: index of the oracle call (0, 1, ...); all lines of one call are
  consecutive and there are ``n`` of them.
* ``kind``: ``"train"`` (spends NRE) or ``"eval"`` (success-rate estimation,
  counted apart).
* ``round``: rounds completed by the state whose proposal drew the query (the
  training call of the driver's round ``r`` has ``round = r - 1``; the evaluation
  recorded with round ``r`` has ``round = r``).
* ``seed``: the seed (its value, not its index) whose proposal drew the query.
* ``query``: the sample, flattened to a list of numbers (ints for token models);
  the event shape is in the run's ``config.json``.
* ``reward``: ``0`` or ``1``.
* ``time``: Unix time at which the call returned.
* ``request``: the call's request id, ``<run>:<kind>:<round>:<call>``: stable
  across a resume, so an oracle that takes it (``oracle(x, request_id=...)``)
  can answer a repeated request from its own records instead of charging twice
  (:class:`~banel_jax.runtime.budget.BudgetKeeper`).
* ``check``: CRC-32 (8 hex digits) of the line's bytes before ``, "check"``.
  A line whose check fails (a reward edited by hand, a damaged disk) stops a
  resume with an error naming the line: a ledger is never replayed wrong.

The file is plain JSON lines: ``pandas.read_json(path, lines=True)`` or ``jq``
read it without this package. A process killed while appending leaves at most one
torn call at the end; readers skip it (:func:`read_calls`) and :class:`Ledger`
cuts it off when it reopens the file.

Example:
  >>> import os, tempfile, numpy as np
  >>> path = os.path.join(tempfile.mkdtemp(), "ledger.jsonl")
  >>> with Ledger(path) as ledger:
  ...   ledger.append("train", 0, seeds=[0, 0, 1], queries=np.array([3, 4, 3]),
  ...                 rewards=np.array([0.0, 1.0, 0.0]))
  0
  >>> [(r["seed"], r["query"], r["reward"]) for r in read_ledger(path)]
  [(0, [3], 0), (0, [4], 1), (1, [3], 0)]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Sequence

import numpy as np

LEDGER_FILE = "ledger.jsonl"
KINDS = ("train", "eval")


class LedgerError(RuntimeError):
  """The ledger file is corrupt (not only torn at its end)."""


class ReplayMismatchError(LedgerError):
  """A resumed run asked the oracle something other than what the ledger holds.

  Runs are deterministic given their seeds, so this means the run directory was
  written by different code, data or settings than the resumed run uses.
  """


@dataclasses.dataclass
class LedgerCall:
  """One complete oracle call read back from a ledger.

  Attributes:
    call: index of the call.
    kind: ``"train"`` or ``"eval"``.
    round: rounds completed by the proposal that drew the queries.
    seeds: ``int64[n]`` seed of each query.
    queries: ``n`` queries, each a flat list of numbers.
    rewards: ``float32[n]`` rewards in {0, 1}.
    end_offset: byte offset just past the call's last line.
    request: the call's request id.
  """

  call: int
  kind: str
  round: int
  seeds: np.ndarray
  queries: list
  rewards: np.ndarray
  end_offset: int
  request: str = ""


def encode_queries(x) -> list:
  """Queries ``x[n, *event_shape]`` as ``n`` flat lists of Python numbers."""
  x = np.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"expected a batch of queries [n, ...], got shape {x.shape}")
  return x.reshape(x.shape[0], -1).tolist()


class Ledger:
  """Append-only, fsync-ed JSON-lines record of oracle calls.

  Opening an existing ledger reads its complete calls from byte ``offset`` on
  (:attr:`tail`; a checkpoint records the offset up to which its calls were
  used), cuts off a torn last call (a process killed while appending), and
  continues the call count after the last complete call.

  Args:
    path: the ledger file (created if missing).
    offset: byte offset of a call boundary to read the tail from.
    calls_before: number of calls before ``offset``.
    fsync: ``fsync`` after every call (default); turn off only for throwaway runs.

  Raises:
    LedgerError: the file is damaged before its last call, or does not continue
      at ``offset`` with call ``calls_before``.
  """

  def __init__(self, path: str | os.PathLike, *, offset: int = 0,
               calls_before: int = 0, fsync: bool = True):
    self.path = os.fspath(path)
    self._fsync = fsync
    exists = os.path.exists(self.path)
    if not exists and offset > 0:
      raise LedgerError(f"ledger {self.path} is missing, but a checkpoint recorded "
                        f"{calls_before} calls ({offset} bytes) in it")
    self.tail, end = read_calls(self.path, offset) if exists else ([], 0)
    if self.tail and self.tail[0].call != calls_before:
      raise LedgerError(f"ledger {self.path} holds call {self.tail[0].call} at byte "
                        f"{offset}, where a checkpoint expected call {calls_before}")
    if exists and os.path.getsize(self.path) > end:
      os.truncate(self.path, end)
    self._file = open(self.path, "ab")
    if not exists and fsync:
      _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
    self.num_calls = self.tail[-1].call + 1 if self.tail else calls_before
    self.offset = end

  def append(self, kind: str, round_index: int, seeds: Sequence[int], queries,
             rewards, request_id: str = "") -> int:
    """Appends one call and makes it durable; returns the call's index.

    Args:
      kind: ``"train"`` or ``"eval"``.
      round_index: rounds completed by the proposal that drew the queries.
      seeds: seed of each query, length ``n``.
      queries: ``[n, *event_shape]`` array of queries.
      rewards: ``[n]`` rewards in {0, 1} (already validated).
      request_id: the call's request id (see the module docstring).
    """
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rows = encode_queries(queries)
    seeds = np.asarray(seeds).reshape(-1)
    rewards = np.asarray(rewards).reshape(-1)
    n = len(rows)
    if seeds.shape[0] != n or rewards.shape[0] != n:
      raise ValueError(f"{n} queries but {seeds.shape[0]} seeds and "
                       f"{rewards.shape[0]} rewards")
    call = self.num_calls
    stamp = f"{time.time():.6f}"
    head = f'{{"call": {call}, "kind": "{kind}", "round": {int(round_index)}, "seed": '
    tail = f', "n": {n}, "time": {stamp}, "request": {json.dumps(str(request_id))}'
    data = b"".join(_checked(
        f'{head}{int(s)}, "query": {json.dumps(q)}, "reward": {int(r)}{tail}'.encode())
        for s, q, r in zip(seeds.tolist(), rows, rewards.tolist()))
    self._file.write(data)
    self._file.flush()
    if self._fsync:
      os.fsync(self._file.fileno())
    self.num_calls += 1
    self.offset += len(data)
    return call

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> "Ledger":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:  # pragma: no cover - platforms without directory fds
    return
  try:
    os.fsync(fd)
  except OSError:  # pragma: no cover
    pass
  finally:
    os.close(fd)


_FIELDS = ("call", "kind", "round", "seed", "query", "reward", "n", "check")
_CHECK = b', "check": "'


def _checked(body: bytes) -> bytes:
  """``body`` (a JSON object without its closing brace) with its check and end."""
  return body + _CHECK + b"%08x" % zlib.crc32(body) + b'"}\n'


def _check_ok(line: bytes) -> bool:
  i = line.rfind(_CHECK)
  if i < 0 or not line.endswith(b'"}'):
    return False
  return line[i + len(_CHECK):-2] == b"%08x" % zlib.crc32(line[:i])


def _parse(line: bytes):
  try:
    rec = json.loads(line)
  except ValueError:
    return None
  if not isinstance(rec, dict) or any(k not in rec for k in _FIELDS):
    return None
  return rec


def read_calls(path: str | os.PathLike, offset: int = 0
               ) -> tuple[list[LedgerCall], int]:
  """Reads the complete calls of a ledger from byte ``offset`` on.

  Args:
    path: the ledger file.
    offset: byte offset of a call boundary (e.g. one recorded in a checkpoint).

  Returns:
    ``(calls, end)``: the complete calls in order, and the byte offset just past
    the last one. Bytes after ``end`` are a torn call from a killed process.

  Raises:
    LedgerError: the file is shorter than ``offset``, or damaged anywhere but in
      its last call.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < offset:
      raise LedgerError(f"ledger {path} has {size} bytes, fewer than the {offset} "
                        "that a checkpoint recorded: it was truncated or replaced")
    f.seek(offset)
    data = f.read()
  calls: list[LedgerCall] = []
  group: list[dict] = []
  pos = offset
  end = offset
  lines = data.split(b"\n")
  complete_lines = lines[:-1]  # the last piece has no newline: torn (or empty)
  for i, line in enumerate(complete_lines):
    pos += len(line) + 1
    rec = _parse(line)
    if rec is None:
      if i == len(complete_lines) - 1:
        break  # a torn last line
      raise LedgerError(f"ledger {path}: unreadable line at byte {pos - len(line) - 1}:"
                        f" {line[:80]!r}")
    if not _check_ok(line):
      raise LedgerError(
          f"ledger {path}: the line at byte {pos - len(line) - 1} (call {rec['call']}, "
          f"seed {rec['seed']}) fails its checksum: it was edited or damaged, so "
          "the rewards it holds cannot be trusted. Restore the ledger from a backup, "
          "or start a new run directory")
    if not group and calls and rec["call"] != calls[-1].call + 1:
      raise LedgerError(f"ledger {path}: call {rec['call']} follows call "
                        f"{calls[-1].call} (a call is missing or repeated)")
    if group and rec["call"] != group[0]["call"]:
      raise LedgerError(f"ledger {path}: call {group[0]['call']} has {len(group)} of "
                        f"its {group[0]['n']} lines before call {rec['call']} starts")
    group.append(rec)
    if len(group) == rec["n"]:
      first = group[0]
      calls.append(LedgerCall(
          call=int(first["call"]), kind=first["kind"], round=int(first["round"]),
          seeds=np.array([r["seed"] for r in group], np.int64),
          queries=[r["query"] for r in group],
          rewards=np.array([r["reward"] for r in group], np.float32),
          end_offset=pos, request=str(first.get("request", ""))))
      end = pos
      group = []
  return calls, end


def read_ledger(path: str | os.PathLike) -> list[dict]:
  """Every line of the complete calls of a ledger, as dicts (for inspection)."""
  calls, _ = read_calls(path)
  out = []
  for c in calls:
    for s, q, r in zip(c.seeds.tolist(), c.queries, c.rewards.tolist()):
      out.append({"call": c.call, "kind": c.kind, "round": c.round, "seed": s,
                  "query": q, "reward": int(r), "request": c.request})
  return out
