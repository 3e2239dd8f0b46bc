"""Run directories: the config, orbax checkpoints, metrics and oracle ledger of a run.

A run directory holds::

  config.json            the run's config dataclass(es), seeds, method, sample shape
  checkpoints/<step>/    orbax checkpoints, one per completed round (the last k)
    state/               the seed-stacked state pytree (StandardSave)
    host/                the driver's host state as JSON (JsonSave): metrics
                         history, budget counters, successes, ledger position
  metrics.jsonl          one JSON record per round
  ledger.jsonl           every oracle call (see :mod:`banel_jax.runtime.ledger`)
  corrupt_checkpoints/   steps found unreadable on resume, moved aside
  .lock                  held (``lockf``) by the process running the directory

Step ``t`` is the state after ``t`` rounds (step 0: after the pretrained model's
evaluation). The state pytree is saved generically: its leaves are flattened to
a dict named by their tree paths (typed PRNG keys as their raw key data), so any
method's state (BaNEL's or a baseline's) checkpoints the same way, and restoring
needs only a freshly initialised state as the template.

Example:
  >>> import os, tempfile, jax, jax.numpy as jnp
  >>> from banel_jax.runtime import run_dir
  >>> path = os.path.join(tempfile.mkdtemp(), "run")
  >>> d = run_dir.RunDirectory(path, {"config": {"lr": 0.1}})
  >>> state = {"w": jnp.ones(2), "key": jax.random.key(0), "round": jnp.int32(1)}
  >>> d.save(1, state, {"history": []})
  >>> step, restored, host = d.restore(state)
  >>> step, restored["w"].tolist(), host["history"]
  (1, [1.0, 1.0], [])
  >>> d.close()
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import weakref
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

try:
  import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
  fcntl = None

from banel_jax.runtime.checkpoint import CheckpointError, restore_target
from banel_jax.runtime.ledger import LEDGER_FILE

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
LOCK_FILE = ".lock"
# The layout and meaning of a run directory's records and checkpoints. A
# directory written under another schema is refused with both versions named.
SCHEMA_VERSION = 2

# Run directories open in this process, by absolute path.
_OPEN_IN_PROCESS: dict[str, "weakref.ref[RunDirectory]"] = {}

__all__ = ["CONFIG_FILE", "METRICS_FILE", "LEDGER_FILE", "CHECKPOINT_DIR",
           "CORRUPT_DIR", "CheckpointWarning", "RunDirError", "RunDirectory",
           "diff_records", "flatten_state", "read_checkpoint", "unflatten_state"]


class RunDirError(CheckpointError):
  """A run directory does not belong to the run trying to use it."""


class CheckpointWarning(UserWarning):
  """A checkpoint step was unreadable or corrupt and was skipped."""


# --- the state pytree as a flat dict -------------------------------------------------

def _entry_name(entry) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaf_names(tree) -> list[str]:
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  names, seen = [], set()
  for i, path in enumerate(paths):
    name = ".".join(_entry_name(e) for e in path) or "leaf"
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    if name in seen:
      name = f"{name}__{i}"
    seen.add(name)
    names.append(name)
  return names


def _is_key(x) -> bool:
  return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def flatten_state(tree) -> dict[str, Any]:
  """The leaves of ``tree`` as ``{path name: array}``, PRNG keys as key data.

  Works under ``jax.eval_shape`` (to build a restore target).
  """
  leaves = jax.tree.leaves(tree)
  return {name: (jax.random.key_data(x) if _is_key(x) else x)
          for name, x in zip(_leaf_names(tree), leaves)}


def unflatten_state(flat: Mapping[str, Any], like):
  """Inverse of :func:`flatten_state`: arrays into the structure of ``like``.

  ``like`` must be a concrete tree (e.g. a freshly initialised state): its
  static fields and PRNG key implementations are reused.
  """
  leaves, treedef = jax.tree.flatten(like)
  out = []
  for name, template in zip(_leaf_names(like), leaves):
    x = flat[name]
    if _is_key(template):
      x = jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(template))
    else:
      x = _as_template(x, template)
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def restore_placement(flat: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  """The orbax restore target of a flattened state: each array's shape, dtype
  and sharding; host (numpy) arrays go where
  :func:`~banel_jax.runtime.checkpoint.restore_target` puts them."""
  on_host = restore_target({n: x for n, x in flat.items()
                            if not isinstance(x, jax.Array)})
  return {n: on_host[n] if n in on_host else
          jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=x.sharding)
          for n, x in flat.items()}


def _as_template(x, template):
  """``x`` placed and typed like ``template`` (device, dtype, weak type), so that
  compiled functions see the same signature as for a freshly built state."""
  if not isinstance(template, jax.Array):
    return np.asarray(x, dtype=np.asarray(template).dtype)
  x = jax.device_put(np.asarray(x, dtype=template.dtype) if not isinstance(x, jax.Array)
                     else x, template.sharding if template.committed else None)
  if getattr(template.aval, "weak_type", False):
    try:  # no public API makes a weakly typed array (TrainState.step is one)
      from jax._src.lax.lax import _convert_element_type
      x = _convert_element_type(x, template.dtype, weak_type=True)
    except Exception:  # noqa: BLE001 - only costs one more compilation
      pass
  return x


def _digest(flat: Mapping[str, Any]) -> str:
  h = hashlib.sha256()
  for name in sorted(flat):
    a = np.asarray(flat[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _leaf_specs(flat: Mapping[str, Any]) -> dict:
  return {k: [np.dtype(v.dtype).name, list(v.shape)] for k, v in flat.items()}


# --- records ------------------------------------------------------------------------

def _flatten_record(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(_flatten_record(v, key + "."))
    else:
      out[key] = v
  return out


def diff_records(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Human-readable differences between two nested JSON records.

  Returns:
    One line per differing (dotted) field, e.g.
    ``"config.filter_factor: saved 2.0, now 1.5"``; empty if equal.
  """
  a = _flatten_record(json.loads(json.dumps(saved)))
  b = _flatten_record(json.loads(json.dumps(current)))
  out = []
  for key in sorted(a.keys() | b.keys()):
    if key not in b:
      out.append(f"{key}: saved {a[key]!r}, absent now")
    elif key not in a:
      out.append(f"{key}: absent in the saved run, now {b[key]!r}")
    elif a[key] != b[key]:
      out.append(f"{key}: saved {a[key]!r}, now {b[key]!r}")
  return out


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# --- the directory ------------------------------------------------------------------

class RunDirectory:
  """A run's directory: ``config.json``, checkpoints, metrics and ledger paths.

  Opening a directory that already holds a ``config.json`` checks it against
  ``record`` and raises :class:`RunDirError` naming every differing field. A
  process holds a lock on the directory until :meth:`close` (or its end): a
  second process opening it gets a :class:`RunDirError`, since two processes
  running one directory would pay for the same queries twice.

  Args:
    path: the directory (created if missing).
    record: JSON-ready description of the run (config dataclasses, seeds,
      method); written to ``config.json``. Keys listed in ``ignore`` are written
      but not compared.
    keep: checkpoints kept (the newest ``keep`` steps).
    ignore: top-level keys of ``record`` that may change between runs (e.g. the
      oracle fault policy).
  """

  def __init__(self, path: str | os.PathLike, record: Mapping[str, Any], *,
               keep: int = 3, ignore: tuple[str, ...] = ()):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    self.path = os.path.abspath(os.fspath(path))
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise RunDirError(f"run directory {self.path} exists and is not a directory")
    if os.path.isdir(self.path) and not os.path.exists(
        os.path.join(self.path, CONFIG_FILE)):
      foreign = sorted(set(os.listdir(self.path)) - {LOCK_FILE})
      if foreign:
        raise RunDirError(
            f"run directory {self.path} is not empty ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}) and holds no {CONFIG_FILE}: it is "
            "not a banel_jax run directory; pass a new or empty directory")
    os.makedirs(self.path, exist_ok=True)
    self._lock = self._acquire_lock()
    self.record = {"schema_version": SCHEMA_VERSION, **json.loads(json.dumps(dict(record)))}
    self._ignore = set(ignore)
    self.keep = keep
    self.checkpoint_dir = os.path.join(self.path, CHECKPOINT_DIR)
    try:
      self._check_or_write_config()
      self._manager = self._new_manager()
    except BaseException:
      self._release_lock()
      raise

  def _check_or_write_config(self) -> None:
    config_path = os.path.join(self.path, CONFIG_FILE)
    if os.path.exists(config_path):
      try:
        with open(config_path) as f:
          saved = json.load(f)
      except ValueError as e:
        raise RunDirError(f"{config_path} is not valid JSON ({e}); this is not a run "
                          "directory of banel_jax, or it was damaged") from e
      version = saved.get("schema_version", saved.get("format")) \
          if isinstance(saved, dict) else None
      if version != SCHEMA_VERSION:
        raise RunDirError(
            f"run directory {self.path} was written under run-directory schema "
            f"{version if version is not None else 'unknown'}, and this banel_jax "
            f"reads schema {SCHEMA_VERSION}: resume it with the banel_jax version "
            "that wrote it, or start a new run directory")
      self._check_record(saved, f"run directory {self.path} (config.json)")
    else:
      text = json.dumps(self.record, indent=2, sort_keys=True) + "\n"
      _write_atomic(config_path, text)

  def _acquire_lock(self):
    # ``lockf`` locks are per process: a second RunDirectory on the same path in
    # this process would get the lock too, so the open ones are tracked here.
    other = _OPEN_IN_PROCESS.get(self.path)
    if other is not None and other() is not None:
      raise RunDirError(f"run directory {self.path} is already open in this process "
                        "(another BanelRunner or RunDirectory uses it); close that "
                        "one first (runner.close(), or use it in a `with` block)")
    _OPEN_IN_PROCESS[self.path] = weakref.ref(self)
    if fcntl is None:  # pragma: no cover
      return None
    try:
      f = open(os.path.join(self.path, LOCK_FILE), "a+")
    except BaseException:
      _OPEN_IN_PROCESS.pop(self.path, None)
      raise
    try:
      fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      owner = f.read().strip() or "unknown"
      f.close()
      _OPEN_IN_PROCESS.pop(self.path, None)
      raise RunDirError(f"run directory {self.path} is in use by another process "
                        f"(pid {owner}); two processes must not run one directory at "
                        "once") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.path, METRICS_FILE)

  @property
  def ledger_path(self) -> str:
    return os.path.join(self.path, LEDGER_FILE)

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.checkpoint_dir, options=options,
                                 item_names=("state", "host"))

  def _compared(self, record: Mapping[str, Any]) -> dict:
    return {k: v for k, v in record.items() if k not in self._ignore}

  def _check_record(self, saved: Mapping[str, Any], where: str) -> None:
    problems = diff_records(self._compared(saved), self._compared(self.record))
    if problems:
      raise RunDirError(
          f"{where} was written by a different run; differing fields: "
          + "; ".join(problems) + ". Use a new run directory, or the original "
          "settings to resume.")

  def steps(self) -> list[int]:
    """Checkpoint steps on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, host: Mapping[str, Any]) -> None:
    """Saves ``state`` (any pytree) and the JSON ``host`` record as ``step``.

    Blocks until the checkpoint is complete on disk; older steps beyond
    ``keep`` are removed.
    """
    flat = jax.device_get(flatten_state(state))
    host = dict(host)
    host.update(schema_version=SCHEMA_VERSION, step=int(step), run=self._compared(self.record),
                state_leaves=_leaf_specs(flat), state_digest=_digest(flat))
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat), host=ocp.args.JsonSave(host)))
    self._manager.wait_until_finished()
    self._manager.reload()
    if int(step) not in self._manager.all_steps():
      raise CheckpointError(f"checkpoint step {step} of {self.path} was not written "
                            "(see the log for orbax's error)")

  def _restore_step(self, step: int, like, target: Mapping[str, Any]):
    host = self._manager.restore(step, args=ocp.args.Composite(
        host=ocp.args.JsonRestore()))["host"]
    if not isinstance(host, dict) or "state_digest" not in host:
      raise ValueError("its host record is missing or incomplete")
    self._check_record(host.get("run", {}), f"checkpoint step {step} of {self.path}")
    want = _leaf_specs(target)
    if host.get("state_leaves") != want:
      problems = diff_records(host.get("state_leaves", {}), want)
      raise RunDirError(
          f"checkpoint step {step} of {self.path} holds a state of another structure "
          f"than this run's: {'; '.join(problems[:10])}")
    flat = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(dict(target))))["state"]
    if _digest(jax.device_get(flat)) != host["state_digest"]:
      raise ValueError("its arrays do not match the checksum saved with them")
    return unflatten_state(flat, like), host

  def restore(self, like, usable=None):
    """Restores the newest good checkpoint.

    Steps that cannot be read, or whose arrays fail their checksum, are moved to
    ``corrupt_checkpoints/`` with a :class:`CheckpointWarning` naming the step,
    and the next older step is tried. A step that ``usable(host)`` refuses (it
    returns the reason as a string; e.g. the ledger no longer reaches the
    position the step recorded) is skipped with a warning, and left in place.

    Args:
      like: a concrete state of the run's structure (e.g. freshly initialised);
        each array is read straight onto the devices and sharding of the
        matching array of ``like`` (a state split over several devices is
        never gathered on one), host arrays onto the default device.
      usable: optional ``host -> str | None``: why a readable step cannot be
        resumed from, or ``None`` if it can.

    Returns:
      ``(step, state, host)`` or ``None`` if no good checkpoint exists.

    Raises:
      RunDirError: a checkpoint was written by a run with another config or
        state structure.
    """
    target = restore_placement(flatten_state(like))
    refused = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, host = self._restore_step(step, like, target)
      except RunDirError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure to read means corrupt
        dest = self._move_aside(step)
        warnings.warn(CheckpointWarning(
            f"checkpoint step {step} of {self.path} is unreadable or corrupt "
            f"({type(e).__name__}: {str(e)[:300]}); moved it to {dest} and falling "
            "back to the previous step"), stacklevel=2)
        continue
      reason = usable(host) if usable is not None else None
      if reason is not None:
        refused.append(f"step {step}: {reason}")
        warnings.warn(CheckpointWarning(
            f"checkpoint step {step} of {self.path} cannot be resumed from: {reason}; "
            "falling back to the previous step"), stacklevel=2)
        continue
      return step, state, host
    if refused:
      raise RunDirError(
          f"no checkpoint of {self.path} can be resumed from ({'; '.join(refused)}). "
          "If the ledger was truncated or replaced, restore it from a backup; "
          "otherwise start a new run directory")
    return None

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.checkpoint_dir, str(step))
    os.makedirs(os.path.join(self.path, CORRUPT_DIR), exist_ok=True)
    dest = os.path.join(self.path, CORRUPT_DIR, str(step))
    i = 1
    while os.path.exists(dest):
      dest = os.path.join(self.path, CORRUPT_DIR, f"{step}.{i}")
      i += 1
    if os.path.exists(src):
      shutil.move(src, dest)
    self._manager.close()
    self._manager = self._new_manager()
    return dest

  def write_metrics(self, history: list[dict], path: str | None = None) -> None:
    """Rewrites a metrics file (default ``metrics.jsonl``) from ``history``."""
    text = "".join(json.dumps(r) + "\n" for r in history)
    _write_atomic(path or self.metrics_path, text)

  def _release_lock(self) -> None:
    ref = _OPEN_IN_PROCESS.get(self.path)
    if ref is not None and ref() is self:
      del _OPEN_IN_PROCESS[self.path]
    if self._lock is not None and not self._lock.closed:
      self._lock.close()  # releases the lock

  def close(self) -> None:
    self._manager.close()
    self._release_lock()

  def __enter__(self) -> "RunDirectory":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_checkpoint(path: str | os.PathLike, step: int | None = None
                    ) -> tuple[int, dict[str, np.ndarray], dict]:
  """Reads a run directory's checkpoint without the run's code (for inspection).

  Args:
    path: the run directory.
    step: the step to read; default the newest.

  Returns:
    ``(step, arrays, host)``: the state's leaves as ``{path name: numpy array}``
    (every leaf with a leading seed axis; PRNG keys as raw key data) and the
    host record (``history``, ``budget``, ``ledger``, ...).
  """
  ckpt_dir = os.path.join(os.path.abspath(os.fspath(path)), CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"no checkpoints in {path}")
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(ckpt_dir, options=options,
                             item_names=("state", "host")) as manager:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoints in {path}")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise CheckpointError(f"no checkpoint step {step} in {path}; steps: "
                            f"{sorted(steps)}")
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), host=ocp.args.JsonRestore()))
  arrays = {k: np.asarray(v) for k, v in out["state"].items()}
  return step, arrays, out["host"]
