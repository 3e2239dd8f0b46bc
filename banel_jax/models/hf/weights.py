"""Reading a local Hugging Face checkpoint: ``config.json``, ``*.safetensors``,
``tokenizer.json``.

A checkpoint directory holds ``config.json`` and either one ``model.safetensors``
or shards listed in ``model.safetensors.index.json`` (any other ``*.safetensors``
files are read when neither is there). Tensors are matched to the Flax
parameters of :mod:`banel_jax.models.hf.modules` by name: the parameter
``layers_0/self_attn/q_proj/kernel`` is the tensor
``model.layers.0.self_attn.q_proj.weight`` (or the same name without the
``model.`` prefix), transposed from PyTorch's ``[out, in]`` to ``[in, out]``
(GPT-2's ``Conv1D`` weights are already ``[in, out]``).

``safetensors`` and ``tokenizers`` are imported when a function needs them,
so that the rest of the package works without them.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from banel_jax.models.hf.config import DecoderConfig, HFCheckpointError, config_from_hf
from banel_jax.models.hf.modules import module_for

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

# Tensors a checkpoint may hold that are no parameters of the model: GPT-2's
# causal-mask buffers and old rotary-frequency buffers.
_IGNORED_TENSORS = (re.compile(r"(^|\.)attn\.(masked_)?bias$"),
                    re.compile(r"rotary_emb\.inv_freq$"))

# Where the families keep their blocks, and the prefix of their base model.
_PREFIX = {"llama": "model.", "gpt2": "transformer."}


def _import(name: str, purpose: str):
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ImportError(f"{purpose} needs the {name!r} package: pip install {name}"
                      ) from e


def _checkpoint_dir(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.exists():
    raise HFCheckpointError(f"checkpoint directory {str(path)!r} does not exist")
  if not path.is_dir():
    raise HFCheckpointError(f"{str(path)!r} is not a directory (expected a "
                            f"checkpoint directory with {CONFIG_FILE})")
  return path


def _read_json(file: pathlib.Path) -> dict:
  try:
    with open(file, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise HFCheckpointError(f"{str(file)!r} is not valid JSON: {e}") from e


def load_config(path: str | os.PathLike, dtype: Any = jnp.float32) -> DecoderConfig:
  """The :class:`DecoderConfig` of the checkpoint directory ``path``.

  Reads ``config.json`` and, where present, ``generation_config.json`` (for its
  end-of-sequence ids).

  Args:
    path: a local checkpoint directory.
    dtype: parameter and activation dtype of the Flax model.

  Raises:
    HFCheckpointError: no such directory, no ``config.json``, or a config this
      package cannot run (its ``model_type`` or a feature).
  """
  path = _checkpoint_dir(path)
  file = path / CONFIG_FILE
  if not file.is_file():
    raise HFCheckpointError(f"no {CONFIG_FILE} in checkpoint directory {str(path)!r}")
  gen_file = path / GENERATION_CONFIG_FILE
  generation = _read_json(gen_file) if gen_file.is_file() else None
  return config_from_hf(_read_json(file), dtype=dtype, generation=generation,
                        where=str(file))


def weight_files(path: str | os.PathLike) -> dict[str, list[str]]:
  """``{file: [tensor names]}`` of the checkpoint's safetensors files.

  Raises:
    HFCheckpointError: no weights, or an index that names a missing shard.
  """
  path = _checkpoint_dir(path)
  index = path / WEIGHTS_INDEX_FILE
  if index.is_file():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise HFCheckpointError(f"{str(index)!r} has no weight_map")
    files: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
      files.setdefault(str(path / shard), []).append(name)
    missing = sorted(os.path.basename(f) for f in files if not os.path.isfile(f))
    if missing:
      raise HFCheckpointError(f"{str(index)!r} lists shard(s) missing from the "
                              f"directory: {', '.join(missing)}")
    return files
  single = path / WEIGHTS_FILE
  candidates = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
  if not candidates:
    raise HFCheckpointError(
        f"no weights in checkpoint directory {str(path)!r}: expected {WEIGHTS_FILE} "
        f"or {WEIGHTS_INDEX_FILE} with its shards (only safetensors files are "
        f"read; convert *.bin/*.pt checkpoints first)")
  safetensors = _import("safetensors", "reading *.safetensors")
  files = {}
  for file in candidates:
    with safetensors.safe_open(str(file), framework="flax") as f:
      files[str(file)] = list(f.keys())
  return files


def _hf_names(path: tuple[str, ...], family: str) -> tuple[list[str], bool]:
  """Candidate tensor names of the parameter at ``path``, and whether the
  tensor is transposed relative to the parameter."""
  *modules, leaf = path
  parts = [re.sub(r"^(layers|h)_(\d+)$", r"\1.\2", m) for m in modules]
  # torch.nn.Linear weights are [out, in]; GPT-2's Conv1D weights [in, out].
  transpose = leaf == "kernel" and (family != "gpt2" or parts[0] == "lm_head")
  leaf = "bias" if leaf == "bias" else "weight"
  name = ".".join(parts + [leaf])
  if parts[0] == "lm_head":
    return [name], transpose
  return [_PREFIX[family] + name, name], transpose


def _summary(names: list[str], limit: int = 12) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_params(path: str | os.PathLike, config: DecoderConfig | None = None, *,
                strict: bool = True) -> dict:
  """The Flax ``params`` of the checkpoint directory ``path``, in ``config.dtype``.

  Args:
    path: a local checkpoint directory.
    config: the model's config (default: :func:`load_config` of ``path``,
      float32).
    strict: raise on tensors of the checkpoint that no parameter uses (other
      than known buffers, and ``lm_head.weight`` of a tied model).

  Returns:
    The ``params`` dict of :func:`~banel_jax.models.hf.modules.module_for`.

  Raises:
    HFCheckpointError: no weights, tensors missing (named in the message),
      a tensor of the wrong shape, or (``strict``) unused tensors.
  """
  if config is None:
    config = load_config(path)
  files = weight_files(path)
  where = {name: file for file, names in files.items() for name in names}
  module = module_for(config)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                              jnp.zeros((1, 1), jnp.int32)))["params"]
  flat_shapes = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  plan, missing = {}, []
  for param_path, shape in flat_shapes.items():
    candidates, transpose = _hf_names(param_path, config.family)
    found = [c for c in candidates if c in where]
    if not found:
      missing.append(candidates[0])
    else:
      plan[param_path] = (found[0], transpose, shape.shape)
  if missing:
    raise HFCheckpointError(f"checkpoint {str(path)!r} lacks {len(missing)} tensor(s) "
                            f"of the {config.model_type} model: {_summary(missing)}")
  if strict:
    used = {name for name, _, _ in plan.values()}
    if config.tie_word_embeddings:
      used.add("lm_head.weight")
    unused = sorted(n for n in where if n not in used
                    and not any(p.search(n) for p in _IGNORED_TENSORS))
    if unused:
      raise HFCheckpointError(
          f"checkpoint {str(path)!r} holds {len(unused)} tensor(s) the "
          f"{config.model_type} model does not use (pass strict=False to ignore "
          f"them): {_summary(unused)}")
  safetensors = _import("safetensors", "reading *.safetensors")
  by_file: dict[str, list] = {}
  for param_path, (name, transpose, shape) in plan.items():
    by_file.setdefault(where[name], []).append((param_path, name, transpose, shape))
  flat = {}
  for file, entries in by_file.items():
    with safetensors.safe_open(file, framework="flax") as f:
      for param_path, name, transpose, shape in entries:
        tensor = f.get_tensor(name)
        if transpose:
          tensor = tensor.T
        if tuple(tensor.shape) != tuple(shape):
          raise HFCheckpointError(
              f"tensor {name!r} in {os.path.basename(file)!r} has shape "
              f"{tuple(tensor.shape)}{' (transposed)' if transpose else ''}, but the "
              f"config gives {tuple(shape)} for {'/'.join(param_path)}")
        flat[param_path] = jnp.asarray(tensor, config.dtype)
  return flax.traverse_util.unflatten_dict(flat)


def load_tokenizer(path: str | os.PathLike):
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (a file or its directory).

  Example: ``tok = load_tokenizer(ckpt); ids = tok.encode("2+2=").ids``;
  ``tok.decode(ids)``; ``tok.token_to_id("<|endoftext|>")``.

  Raises:
    HFCheckpointError: no such file or directory, or no ``tokenizer.json`` in it.
    ImportError: the ``tokenizers`` package is not installed.
  """
  path = pathlib.Path(path)
  file = path / TOKENIZER_FILE if path.is_dir() else path
  if not file.is_file():
    where = (f"in directory {str(path)!r}" if path.is_dir()
             else f"at {str(path)!r}")
    raise HFCheckpointError(f"no {TOKENIZER_FILE} {where}")
  tokenizers = _import("tokenizers", "load_tokenizer")
  return tokenizers.Tokenizer.from_file(str(file))


def param_count(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
