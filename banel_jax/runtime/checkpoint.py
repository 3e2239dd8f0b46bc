"""Saving and loading model weights with orbax, with a JSON metadata record.

A weights checkpoint is a directory holding

* ``params/``: the parameter pytree, written by ``ocp.StandardCheckpointer``
  (``ocp.args.StandardSave`` / ``StandardRestore`` under the hood);
* ``metadata.json``: a JSON object, typically the model's config (see
  :func:`config_to_dict`) plus training facts, written after the params so that
  a directory with ``metadata.json`` is complete.

Example:
  >>> import tempfile, os, jax.numpy as jnp
  >>> from banel_jax.runtime import checkpoint
  >>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
  >>> checkpoint.save_params(d, {"w": jnp.ones(2)}, {"width": 2})
  >>> params, meta = checkpoint.load_params(d, expected_metadata={"width": 2})
  >>> params["w"].shape, meta["width"]
  ((2,), 2)
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from banel_jax.core.config import config_to_dict, jsonable as _jsonable  # noqa: F401 (re-exported)
from banel_jax.core.types import Params

PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"
# SHA-256 and shapes of the saved arrays, checked on every load.
INTEGRITY_FILE = "integrity.json"


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete, or does not match what was expected."""


def _check_directory(directory) -> str:
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint directory at {directory}")
  missing = [n for n in (PARAMS_DIR, METADATA_FILE)
             if not os.path.exists(os.path.join(directory, n))]
  if missing:
    raise CheckpointError(f"{directory} is not a complete weights checkpoint: "
                          f"missing {', '.join(missing)}")
  return directory


def save_params(directory, params: Params, metadata: Mapping[str, Any], *,
                overwrite: bool = False) -> None:
  """Saves ``params`` and a JSON ``metadata`` record to ``directory``.

  Args:
    directory: target directory (created, parents included).
    params: a pytree of arrays.
    metadata: JSON-serialisable mapping (e.g. ``{"config": config_to_dict(cfg)}``).
      Checked before anything is written.
    overwrite: replace an existing checkpoint at ``directory``; otherwise an
      existing one is an error.

  Raises:
    CheckpointError: ``directory`` already holds a checkpoint and ``overwrite``
      is False.
    TypeError: ``metadata`` is not JSON-serialisable.
  """
  directory = os.path.abspath(os.fspath(directory))
  text = json.dumps(dict(metadata), indent=2, sort_keys=True)  # fail early
  params_dir = os.path.join(directory, PARAMS_DIR)
  meta_path = os.path.join(directory, METADATA_FILE)
  if os.path.exists(params_dir) or os.path.exists(meta_path):
    if not overwrite:
      raise CheckpointError(f"a checkpoint already exists at {directory}; pass "
                            "overwrite=True to replace it")
    if os.path.exists(meta_path):
      os.remove(meta_path)  # the directory is incomplete until the end
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, params, force=overwrite)
    ckptr.wait_until_finished()
  _write_json_atomic(os.path.join(directory, INTEGRITY_FILE), integrity_record(params))
  tmp = meta_path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, meta_path)


def integrity_record(params: Params) -> dict:
  """``{"sha256": ..., "leaves": {path: "dtype[shape]"}}`` of a params pytree."""
  h = hashlib.sha256()
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(jax.device_get(leaf))
    name = jax.tree_util.keystr(path)
    leaves[name] = f"{a.dtype}{list(a.shape)}"
    h.update(name.encode() + leaves[name].encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return {"sha256": h.hexdigest(), "leaves": leaves}


def write_integrity(directory) -> dict:
  """Writes the integrity record of an existing checkpoint (one saved before
  records were kept) from its current arrays; returns it."""
  directory = _check_directory(directory)
  path = os.path.join(directory, PARAMS_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(path, _saved_target(ckptr, path))
  record = integrity_record(params)
  _write_json_atomic(os.path.join(directory, INTEGRITY_FILE), record)
  return record


def _write_json_atomic(path: str, record: Mapping[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def _check_integrity(params: Params, directory: str) -> None:
  path = os.path.join(directory, INTEGRITY_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"checkpoint {directory} has no {INTEGRITY_FILE}, so its arrays cannot be "
        "checked; if you trust it, write one with "
        "banel_jax.runtime.checkpoint.write_integrity(directory)")
  saved = _read_json(path)
  got = integrity_record(params)
  if saved.get("leaves") != got["leaves"]:
    problems = [f"{k}: saved {saved.get('leaves', {}).get(k)}, read {v}"
                for k, v in got["leaves"].items()
                if saved.get("leaves", {}).get(k) != v]
    raise CheckpointError(f"checkpoint {directory} holds other arrays than it "
                          f"recorded: {'; '.join(problems[:5])}")
  if saved.get("sha256") != got["sha256"]:
    raise CheckpointError(
        f"checkpoint {directory}: the arrays do not match the SHA-256 saved with them "
        f"({INTEGRITY_FILE}); the files were changed or damaged. Restore them from "
        "a copy, or retrain")


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}): the file was damaged or "
                          "edited; restore it from a copy") from None


def load_metadata(directory) -> dict:
  """Reads only the metadata record of a checkpoint written by :func:`save_params`."""
  directory = _check_directory(directory)
  return _read_json(os.path.join(directory, METADATA_FILE))


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def check_metadata(metadata: Mapping[str, Any], expected: Mapping[str, Any],
                   where: str = "checkpoint") -> None:
  """Raises :class:`CheckpointError` naming every key where ``metadata`` differs.

  Only the (nested) keys present in ``expected`` are compared; tuples and lists
  compare equal element-wise.
  """
  got, want = _flatten(metadata), _flatten(_jsonable(dict(expected)))
  problems = []
  for key, value in want.items():
    if key not in got:
      problems.append(f"{key}: missing (expected {value!r})")
    elif got[key] != value:
      problems.append(f"{key}: saved {got[key]!r}, expected {value!r}")
  if problems:
    raise CheckpointError(f"{where} does not match the expected metadata: "
                          + "; ".join(problems))


def restore_target(tree):
  """A restore target that puts every array of ``tree`` on the default device.

  Orbax otherwise restores each array with the sharding recorded when it was
  saved, which fails ("Topology mismatch") when the checkpoint was written on
  another platform or device count: a CPU-trained checkpoint loaded on a GPU, a
  run directory resumed on another machine.

  Args:
    tree: a pytree whose leaves have ``shape`` and ``dtype`` (arrays,
      ``jax.ShapeDtypeStruct`` or orbax ``ArrayMetadata``).

  Returns:
    The same tree of ``jax.ShapeDtypeStruct`` on ``jax.devices()[0]``.
  """
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding),
      tree)


def _saved_target(ckptr, path):
  """:func:`restore_target` of the arrays saved at ``path`` (from their metadata)."""
  tree = ckptr.metadata(path)
  tree = getattr(tree, "item_metadata", tree)
  return restore_target(getattr(tree, "tree", tree))


def load_params(directory, *, expected_metadata: Mapping[str, Any] | None = None,
                like: Params | None = None) -> tuple[Params, dict]:
  """Loads a checkpoint written by :func:`save_params`.

  Args:
    directory: the checkpoint directory.
    expected_metadata: if given, every (nested) key in it must match the saved
      metadata, e.g. ``{"config": config_to_dict(cfg)}``.
    like: if given, a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
      ``jax.eval_shape(model.init, key)``) that the restored params must match
      in structure, shapes and dtypes. Without it any params load; BaNEL's
      ``init`` and the runner still refuse params that do not fit the model.

  Every load checks the arrays against the SHA-256 and shapes recorded when
  they were saved (``integrity.json``).

  Returns:
    ``(params, metadata)``: params as ``jax.Array`` leaves, metadata as a dict.

  Raises:
    CheckpointError: the directory is missing or incomplete, a file is damaged,
      the arrays fail their checksum, or the metadata or the params do not
      match what was expected.
  """
  directory = _check_directory(directory)
  metadata = load_metadata(directory)
  if expected_metadata is not None:
    check_metadata(metadata, expected_metadata, where=f"checkpoint {directory}")
  path = os.path.join(directory, PARAMS_DIR)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(path, _saved_target(ckptr, path))
  except Exception as e:  # noqa: BLE001 - any failure to read is damage
    raise CheckpointError(f"checkpoint {directory}: its arrays cannot be read "
                          f"({type(e).__name__}: {str(e)[:300]}); the files were "
                          "changed or damaged. Restore them from a copy, or retrain"
                          ) from e
  _check_integrity(params, directory)
  if like is not None:
    _check_like(params, like, directory)
  return params, metadata


def _check_like(params, like, directory):
  got = jax.tree_util.tree_flatten_with_path(params)[0]
  want = jax.tree_util.tree_flatten_with_path(like)[0]
  got_d = {jax.tree_util.keystr(p): v for p, v in got}
  want_d = {jax.tree_util.keystr(p): v for p, v in want}
  problems = [f"{k} missing" for k in want_d if k not in got_d]
  problems += [f"{k} unexpected" for k in got_d if k not in want_d]
  for k in want_d.keys() & got_d.keys():
    g, w = got_d[k], want_d[k]
    if tuple(g.shape) != tuple(w.shape) or np.dtype(g.dtype) != np.dtype(w.dtype):
      problems.append(f"{k} is {g.dtype}{list(g.shape)}, expected "
                      f"{w.dtype}{list(w.shape)}")
  if problems:
    raise CheckpointError(f"params in {directory} do not match the expected "
                          f"structure: {'; '.join(sorted(problems))}")
