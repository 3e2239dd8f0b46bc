"""Flax modules of the Llama/Qwen2 and GPT-2 decoders.

Both modules share one interface, so that the full forward pass, the prompt's
prefill and the one-token decoding step all run the same code:

* ``hidden(tokens, start, cache=None, prefix=None) -> (h, kv)`` runs the blocks
  on ``tokens`` ``int32[B, T]`` at absolute positions ``start .. start + T - 1``
  and returns the final-normed hidden states ``[B, T, hidden_size]`` with the
  key/value cache (a tuple of one :class:`LayerKV` per layer).

  - ``prefix`` (optional): keys and values of earlier positions ``0 .. P-1``
    shared by every row of the batch (a prompt), one :class:`LayerKV` per layer
    of ``[num_kv_heads, P, head_dim]`` arrays. Every token attends to all of it.
  - ``cache=None``: the tokens attend to each other causally; the returned
    cache holds their keys and values, ``[B, num_kv_heads, T, head_dim]``.
  - ``cache`` given (``[B, num_kv_heads, S, head_dim]`` per layer, slot ``s``
    for position ``P + s``): the tokens' keys and values are written to slots
    ``start - P .. start - P + T - 1``, each token attends to the slots up to
    its own, and the updated cache is returned.

* ``head(h) -> f32[..., vocab_size]``: the output logits of hidden states.
* ``__call__(tokens) -> f32[B, T, vocab_size]``: the full causal forward at
  positions ``0 .. T-1`` (used by ``init``).

Keys are stored after the rotary embedding, heads before positions. Parameter
names follow the Hugging Face module names (``layers_0/self_attn/q_proj``,
``h_0/attn/c_attn``), so :mod:`banel_jax.models.hf.weights` maps tensors by name.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from banel_jax.models.hf.config import DecoderConfig

Array = jax.Array


class LayerKV(NamedTuple):
  """Keys and values of one layer: ``[B, KV, S, D]`` (a cache) or ``[KV, P, D]``
  (a prefix shared by the batch)."""

  k: Array
  v: Array


def _activation(name: str):
  if name in ("silu", "swish"):
    return jax.nn.silu
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == "relu":
    return jax.nn.relu
  return lambda x: jax.nn.gelu(x, approximate=True)  # the tanh forms


def attend(q: Array, k: Array, v: Array, mask: Array, scale: float,
           prefix: LayerKV | None = None) -> Array:
  """Grouped-query attention of ``q`` over a prefix and the batch's own keys.

  Args:
    q: ``[B, T, H, D]`` queries (``H`` a multiple of ``KV``; query head ``h``
      reads key/value head ``h // (H // KV)``).
    k: ``[B, KV, S, D]`` the batch's own keys.
    v: ``[B, KV, S, D]`` the batch's own values.
    mask: ``bool[T, S]``, True where query ``t`` may attend to own key ``s``.
    scale: the factor of the scores.
    prefix: keys and values ``[KV, P, D]`` every query attends to, or None.

  Returns:
    ``[B, T, H * D]``.
  """
  b, t, h, d = q.shape
  kv = k.shape[1]
  q = q.reshape(b, t, kv, h // kv, d)
  own = jnp.einsum("btkgd,bksd->bkgts", q, k).astype(jnp.float32) * scale
  own = jnp.where(mask[None, None, None], own, jnp.finfo(jnp.float32).min)
  if prefix is None:
    weights = jax.nn.softmax(own, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", weights, v)
  else:
    shared = jnp.einsum("btkgd,kpd->bkgtp", q, prefix.k).astype(jnp.float32) * scale
    p = shared.shape[-1]
    weights = jax.nn.softmax(jnp.concatenate([shared, own], axis=-1),
                             axis=-1).astype(v.dtype)
    out = (jnp.einsum("bkgtp,kpd->btkgd", weights[..., :p], prefix.v)
           + jnp.einsum("bkgts,bksd->btkgd", weights[..., p:], v))
  return out.reshape(b, t, h * d)


def _own_keys(k: Array, v: Array, cache: LayerKV | None, slot: Array | None
              ) -> tuple[LayerKV, Array]:
  """The layer's own keys after this call, and the ``bool[T, S]`` mask."""
  t = k.shape[2]
  if cache is None:
    return LayerKV(k, v), jnp.tril(jnp.ones((t, t), bool))
  zero = jnp.zeros((), jnp.int32)
  idx = (zero, zero, slot, zero)
  k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), idx)
  v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), idx)
  s = cache.k.shape[2]
  mask = jnp.arange(s)[None, :] <= slot + jnp.arange(t)[:, None]
  return LayerKV(k_all, v_all), mask


class RMSNorm(nn.Module):
  """``x / rms(x) * weight``, computed in float32 and cast back like Llama's."""

  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale * x32.astype(self.dtype)


def _rotate(x: Array, cos: Array, sin: Array) -> Array:
  """Rotary embedding of ``x`` ``[B, T, N, D]`` (rotate-half layout) by
  ``cos``/``sin`` ``[T, D]``."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[None, :, None].astype(x.dtype), sin[None, :, None].astype(x.dtype)
  return x * cos + rotated * sin


def _dense(features, use_bias, cfg: DecoderConfig, name):
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.dtype, param_dtype=cfg.dtype,
                  kernel_init=nn.initializers.normal(0.02), name=name)


class _LlamaAttention(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, cos, sin, cache, slot, prefix):
    cfg = self.config
    b, t, _ = x.shape
    q = _dense(cfg.num_heads * cfg.head_dim, cfg.qkv_bias, cfg, "q_proj")(x)
    k = _dense(cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias, cfg, "k_proj")(x)
    v = _dense(cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias, cfg, "v_proj")(x)
    q = _rotate(q.reshape(b, t, cfg.num_heads, cfg.head_dim), cos, sin)
    k = _rotate(k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim), cos, sin)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    kv, mask = _own_keys(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), cache, slot)
    out = attend(q, kv.k, kv.v, mask, cfg.head_dim ** -0.5, prefix)
    return _dense(cfg.hidden_size, cfg.out_bias, cfg, "o_proj")(out), kv


class _LlamaMLP(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    act = _activation(cfg.activation)
    gate = _dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "gate_proj")(x)
    up = _dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "up_proj")(x)
    return _dense(cfg.hidden_size, cfg.mlp_bias, cfg, "down_proj")(act(gate) * up)


class _LlamaBlock(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, cos, sin, cache, slot, prefix):
    cfg = self.config
    h = RMSNorm(cfg.norm_eps, cfg.dtype, name="input_layernorm")(x)
    h, kv = _LlamaAttention(cfg, name="self_attn")(h, cos, sin, cache, slot, prefix)
    x = x + h
    h = RMSNorm(cfg.norm_eps, cfg.dtype, name="post_attention_layernorm")(x)
    return x + _LlamaMLP(cfg, name="mlp")(h), kv


def _slot_of(start, prefix):
  p = 0 if prefix is None else prefix[0].k.shape[1]
  return jnp.asarray(start, jnp.int32) - p


class LlamaLM(nn.Module):
  """The Llama/Qwen2 decoder (see the module doc for the interface)."""

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                                 param_dtype=cfg.dtype,
                                 embedding_init=nn.initializers.normal(0.02),
                                 name="embed_tokens")
    self.layers = [_LlamaBlock(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.norm_eps, cfg.dtype, name="norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, False, cfg, "lm_head")

  def hidden(self, tokens, start, cache=None, prefix=None):
    cfg = self.config
    t = tokens.shape[1]
    positions = jnp.asarray(start, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(cfg.inv_freq())[None]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [T, D]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    slot = None if cache is None else _slot_of(start, prefix)
    x = self.embed_tokens(tokens)
    kvs = []
    for i, layer in enumerate(self.layers):
      x, kv = layer(x, cos, sin, None if cache is None else cache[i], slot,
                    None if prefix is None else prefix[i])
      kvs.append(kv)
    return self.norm(x), tuple(kvs)

  def head(self, h):
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(h).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def __call__(self, tokens):
    return self.head(self.hidden(tokens, 0)[0])


def _layer_norm(cfg: DecoderConfig, name: str):
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.dtype,
                      use_fast_variance=False, name=name)


class _GPT2Attention(nn.Module):
  config: DecoderConfig
  layer_idx: int

  @nn.compact
  def __call__(self, x, cache, slot, prefix):
    cfg = self.config
    b, t, _ = x.shape
    qkv = _dense(3 * cfg.hidden_size, True, cfg, "c_attn")(x)
    qkv = qkv.reshape(b, t, 3, cfg.num_heads, cfg.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    kv, mask = _own_keys(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), cache, slot)
    scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
    if cfg.attn_scale_by_layer:
      scale /= float(self.layer_idx + 1)
    out = attend(q, kv.k, kv.v, mask, scale, prefix)
    return _dense(cfg.hidden_size, True, cfg, "c_proj")(out), kv


class _GPT2MLP(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = _activation(cfg.activation)(_dense(cfg.intermediate_size, True, cfg, "c_fc")(x))
    return _dense(cfg.hidden_size, True, cfg, "c_proj")(h)


class _GPT2Block(nn.Module):
  config: DecoderConfig
  layer_idx: int

  @nn.compact
  def __call__(self, x, cache, slot, prefix):
    cfg = self.config
    h, kv = _GPT2Attention(cfg, self.layer_idx, name="attn")(
        _layer_norm(cfg, "ln_1")(x), cache, slot, prefix)
    x = x + h
    return x + _GPT2MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x)), kv


class GPT2LM(nn.Module):
  """The GPT-2 decoder (see the module doc for the interface).

  Dense kernels are ``[in, out]``, the layout of GPT-2's ``Conv1D`` weights.
  """

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    embed = dict(dtype=cfg.dtype, param_dtype=cfg.dtype,
                 embedding_init=nn.initializers.normal(0.02))
    self.wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="wte", **embed)
    self.wpe = nn.Embed(cfg.max_positions, cfg.hidden_size, name="wpe", **embed)
    self.h = [_GPT2Block(cfg, i, name=f"h_{i}") for i in range(cfg.num_layers)]
    self.ln_f = _layer_norm(cfg, "ln_f")
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, False, cfg, "lm_head")

  def hidden(self, tokens, start, cache=None, prefix=None):
    t = tokens.shape[1]
    positions = jnp.asarray(start, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    slot = None if cache is None else _slot_of(start, prefix)
    x = self.wte(tokens) + self.wpe(positions)[None]
    kvs = []
    for i, block in enumerate(self.h):
      x, kv = block(x, None if cache is None else cache[i], slot,
                    None if prefix is None else prefix[i])
      kvs.append(kv)
    return self.ln_f(x), tuple(kvs)

  def head(self, h):
    if self.config.tie_word_embeddings:
      return self.wte.attend(h).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def __call__(self, tokens):
    return self.head(self.hidden(tokens, 0)[0])


def module_for(config: DecoderConfig) -> nn.Module:
  """The Flax module of ``config``'s family."""
  return GPT2LM(config) if config.family == "gpt2" else LlamaLM(config)
