"""Decoder hyperparameters parsed from a Hugging Face ``config.json``.

:class:`DecoderConfig` describes one decoder of either supported family:

* ``"llama"`` (``model_type`` ``llama`` or ``qwen2``): RMSNorm, rotary position
  embeddings, grouped-query attention and a SwiGLU MLP. Qwen2 always has
  biases on the query, key and value projections; Llama has them (and one on
  the output projection) only with ``attention_bias``.
* ``"gpt2"`` (``model_type`` ``gpt2``): learned position embeddings, LayerNorm,
  a fused query/key/value projection and a GELU MLP, all with biases.

:func:`config_from_hf` reads the dictionary of a ``config.json`` in either the
layout of ``transformers`` 4 (``rope_theta``, ``rope_scaling``) or 5
(``rope_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

# model_type -> family of the Flax module that implements it.
SUPPORTED_MODEL_TYPES = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2"}

# Rotary variants implemented by :meth:`DecoderConfig.inv_freq`.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Activation names of ``hidden_act`` / ``activation_function``.
SUPPORTED_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh",
                         "gelu_fast", "relu")


class HFCheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be read: the message names the problem."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyperparameters of a pretrained decoder (frozen and hashable).

  Attributes:
    model_type: the checkpoint's ``model_type`` (``llama``, ``qwen2``, ``gpt2``).
    vocab_size: rows of the token embedding (and columns of the logits).
    hidden_size: residual-stream width.
    num_layers: number of decoder blocks.
    num_heads: query heads per block.
    num_kv_heads: key/value heads per block (divides ``num_heads``; fewer than
      ``num_heads`` is grouped-query attention).
    head_dim: width of one head.
    intermediate_size: hidden width of the MLP.
    max_positions: ``max_position_embeddings`` (a hard limit for GPT-2's learned
      positions; informational for rotary models).
    norm_eps: epsilon of the RMSNorm / LayerNorm.
    activation: MLP activation (one of :data:`SUPPORTED_ACTIVATIONS`).
    tie_word_embeddings: the output head is the transposed token embedding.
    qkv_bias: biases on the query, key and value projections.
    out_bias: a bias on the attention output projection.
    mlp_bias: biases on the MLP projections.
    rope_theta: base of the rotary frequencies (``llama`` family).
    rope_scaling: the rotary variant as sorted ``(key, value)`` pairs, with
      ``("rope_type", ...)`` among them; ``()`` for plain rotary embeddings.
    attn_scale_by_layer: GPT-2's ``scale_attn_by_inverse_layer_idx``.
    scale_attn_weights: divide attention scores by ``sqrt(head_dim)`` (GPT-2
      may turn this off; always on for the ``llama`` family).
    bos_token_id: the begin-of-sequence id of the checkpoint, or ``None``.
    eos_token_ids: the end-of-sequence ids of the checkpoint (``config.json``
      and, where present, ``generation_config.json``), possibly empty.
    pad_token_id: the padding id of the checkpoint, or ``None``.
    dtype: parameter and activation dtype (``float32`` by default; softmaxes,
      norms and logits are computed in float32 whatever it is).
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  max_positions: int
  norm_eps: float
  activation: str
  tie_word_embeddings: bool
  qkv_bias: bool
  out_bias: bool
  mlp_bias: bool
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  attn_scale_by_layer: bool = False
  scale_attn_weights: bool = True
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise HFCheckpointError(_unsupported_type_message(self.model_type))
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "intermediate_size", "max_positions"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HFCheckpointError(f"{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise HFCheckpointError(f"num_heads={self.num_heads} must be a multiple of "
                              f"num_kv_heads={self.num_kv_heads}")
    if self.family == "gpt2" and self.num_heads * self.head_dim != self.hidden_size:
      raise HFCheckpointError(f"gpt2: hidden_size={self.hidden_size} must equal "
                              f"num_heads * head_dim")
    if self.family == "llama" and self.head_dim % 2:
      raise HFCheckpointError(f"rotary embeddings need an even head_dim, got "
                              f"{self.head_dim}")
    if self.activation not in SUPPORTED_ACTIVATIONS:
      raise HFCheckpointError(f"unsupported activation {self.activation!r}; "
                              f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    rope_type = dict(self.rope_scaling).get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise HFCheckpointError(f"unsupported rope_type {rope_type!r}; supported: "
                              f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                                     jnp.dtype(jnp.float16)):
      raise HFCheckpointError(f"dtype must be float32, bfloat16 or float16, got "
                              f"{self.dtype!r}")

  @property
  def family(self) -> str:
    """``"llama"`` or ``"gpt2"``: which Flax module implements the config."""
    return SUPPORTED_MODEL_TYPES[self.model_type]

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **kwargs) -> "DecoderConfig":
    return dataclasses.replace(self, **kwargs)

  def inv_freq(self) -> np.ndarray:
    """Rotary inverse frequencies ``f32[head_dim // 2]`` of the config's variant."""
    dim = self.head_dim
    inv = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    inv = inv.astype(np.float32)
    params = dict(self.rope_scaling)
    rope_type = params.get("rope_type", "default")
    if rope_type == "linear":
      inv = inv / np.float32(params["factor"])
    elif rope_type == "llama3":
      factor = float(params["factor"])
      low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
      old_len = float(params["original_max_position_embeddings"])
      low_wavelen, high_wavelen = old_len / low, old_len / high
      wavelen = 2 * math.pi / inv
      scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
      smooth = (old_len / wavelen - low) / (high - low)
      smoothed = (1 - smooth) * scaled / factor + smooth * scaled
      medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
      inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def _unsupported_type_message(model_type) -> str:
  return (f"unsupported model_type {model_type!r}; supported: "
          f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")


def _require(d: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
  missing = [k for k in keys if d.get(k) is None]
  if missing:
    raise HFCheckpointError(f"{where} lacks required key(s): {', '.join(missing)}")


def _token_ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


def _rope_settings(d: Mapping[str, Any], where: str) -> tuple[float, tuple]:
  """``(rope_theta, rope_scaling pairs)`` from either ``transformers`` layout."""
  params = dict(d.get("rope_scaling") or {})
  new_style = d.get("rope_parameters") or {}
  if any(isinstance(v, Mapping) for v in new_style.values()):
    raise HFCheckpointError(f"{where}: per-layer rope_parameters are not supported")
  params.update(new_style)
  theta = float(params.pop("rope_theta", d.get("rope_theta", 10000.0)))
  rope_type = params.pop("rope_type", params.pop("type", "default"))
  if float(params.pop("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
           ) != 1.0:
    raise HFCheckpointError(f"{where}: partial_rotary_factor != 1 is not supported")
  if rope_type == "default":
    return theta, ()
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise HFCheckpointError(f"{where}: unsupported rope_type {rope_type!r}; "
                            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
  needed = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}[rope_type]
  _require(params, needed, f"{where} rope scaling {rope_type!r}")
  pairs = tuple(sorted((k, params[k]) for k in needed)) + (("rope_type", rope_type),)
  return theta, tuple(sorted(pairs))


def config_from_hf(d: Mapping[str, Any], *, dtype: Any = jnp.float32,
                   generation: Mapping[str, Any] | None = None,
                   where: str = "config.json") -> DecoderConfig:
  """The :class:`DecoderConfig` of a ``config.json`` dictionary.

  Args:
    d: the parsed ``config.json``.
    dtype: parameter and activation dtype of the Flax model.
    generation: the parsed ``generation_config.json``, if any; its
      ``eos_token_id`` values are added to the config's end ids.
    where: how error messages name the source (e.g. the file's path).

  Returns:
    The :class:`DecoderConfig`.

  Raises:
    HFCheckpointError: unsupported ``model_type`` or feature, or a missing key.
  """
  model_type = d.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise HFCheckpointError(f"{where}: {_unsupported_type_message(model_type)}")
  eos = _token_ids(d.get("eos_token_id"))
  if generation is not None:
    eos += tuple(i for i in _token_ids(generation.get("eos_token_id")) if i not in eos)
  special = dict(bos_token_id=d.get("bos_token_id"), eos_token_ids=eos,
                 pad_token_id=d.get("pad_token_id"), dtype=dtype)
  if SUPPORTED_MODEL_TYPES[model_type] == "gpt2":
    return _gpt2_config(d, where, special)
  return _llama_config(d, where, special)


def _llama_config(d, where, special) -> DecoderConfig:
  model_type = d["model_type"]
  _require(d, ("vocab_size", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size"), where)
  if d.get("use_sliding_window") or "sliding_attention" in (d.get("layer_types") or ()):
    raise HFCheckpointError(f"{where}: sliding-window attention is not supported")
  heads = int(d["num_attention_heads"])
  hidden = int(d["hidden_size"])
  theta, scaling = _rope_settings(d, where)
  qwen2 = model_type == "qwen2"
  attention_bias = bool(d.get("attention_bias", False))
  return DecoderConfig(
      model_type=model_type, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
      num_layers=int(d["num_hidden_layers"]), num_heads=heads,
      num_kv_heads=int(d.get("num_key_value_heads") or heads),
      head_dim=int(d.get("head_dim") or hidden // heads),
      intermediate_size=int(d["intermediate_size"]),
      max_positions=int(d.get("max_position_embeddings") or
                        (32768 if qwen2 else 2048)),
      norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      activation=d.get("hidden_act", "silu"),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      qkv_bias=qwen2 or attention_bias, out_bias=(not qwen2) and attention_bias,
      mlp_bias=bool(d.get("mlp_bias", False)), rope_theta=theta, rope_scaling=scaling,
      **special)


def _gpt2_config(d, where, special) -> DecoderConfig:
  _require(d, ("vocab_size", "n_embd", "n_layer", "n_head"), where)
  if d.get("add_cross_attention"):
    raise HFCheckpointError(f"{where}: gpt2 with cross-attention is not supported")
  hidden, heads = int(d["n_embd"]), int(d["n_head"])
  if hidden % heads:
    raise HFCheckpointError(f"{where}: n_embd={hidden} is not a multiple of "
                            f"n_head={heads}")
  return DecoderConfig(
      model_type="gpt2", vocab_size=int(d["vocab_size"]), hidden_size=hidden,
      num_layers=int(d["n_layer"]), num_heads=heads, num_kv_heads=heads,
      head_dim=hidden // heads,
      intermediate_size=int(d.get("n_inner") or 4 * hidden),
      max_positions=int(d.get("n_positions") or d.get("n_ctx") or 1024),
      norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
      activation=d.get("activation_function", "gelu_new"),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
      qkv_bias=True, out_bias=True, mlp_bias=True,
      attn_scale_by_layer=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
      scale_attn_weights=bool(d.get("scale_attn_weights", True)), **special)
