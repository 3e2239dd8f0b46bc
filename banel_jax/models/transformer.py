"""A small causal decoder-only Transformer over fixed-length token sequences.

The model of the addition task: a sequence is a row of ``max_len`` ``int32``
tokens, stored **without** the BOS token (the model prepends BOS internally to
predict token 0). Semantics of a sequence ``x`` of shape ``[max_len]``:

* Tokens up to and including the first EOS are "content": each is drawn from the
  model's next-token distribution with the BOS and PAD logits masked to
  ``-inf`` (BOS and PAD are never emitted before EOS). EOS itself and every other
  id (digits, ``+``, ``=``, and any unused id) are in the support.
* Every position after the first EOS holds PAD, deterministically (probability
  1, log-probability 0). A sequence with a non-PAD token after its first EOS, a
  BOS/PAD before it, or an id outside ``[0, vocab_size)`` has
  ``log_prob == -inf``.
* A sequence with no EOS within ``max_len`` is a valid, truncated sequence,
  scored over all ``max_len`` tokens.

With these rules ``exp(log_prob)`` sums to exactly 1 over all ``int32[max_len]``
arrays, and ``sample`` draws from that same distribution.

The network is pre-LayerNorm, with learned positional embeddings, GELU MLPs and
an untied output head. It has two entry points that share one set of
parameters: a full causal forward pass (teacher forcing, used by ``log_prob``;
on a CPU a large batch is scored in chunks of :data:`CPU_SCORE_CHUNK`
sequences, see :func:`make_transformer`) and a one-token decode step against an
explicit key/value cache (used by ``sample``, ``greedy_decode`` and
``greedy_decode_ragged`` inside ``lax.scan``; the steps run in four segments,
each against a cache only as long as it needs, :func:`decode_segment_ends`).
Both may look up the first block's input vectors and its queries, keys and
values in :class:`InputTables`, one row per (position, token) pair, instead of
computing them per token (``make_transformer``'s ``input_tables``).
The cache is a plain pytree, a tuple with one :class:`LayerCache` per layer,
each of ``[batch, num_heads, slots, head_dim]`` keys and values (``max_len + 1``
slots at most); the decode position is passed in as an argument.

Example:
  >>> import jax
  >>> from banel_jax.models import transformer
  >>> cfg = transformer.TransformerConfig(num_layers=1, width=16, num_heads=2)
  >>> model = transformer.make_transformer_model(cfg)
  >>> params = model.init(jax.random.key(0))
  >>> x = model.sample(params, jax.random.key(1), 3)
  >>> x.shape, model.log_prob(params, x).shape
  ((3, 24), (3,))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from banel_jax.core.types import Array, GenerativeModel, Params, PRNGKey, SplitLogProb

# Default token ids for the addition task: digits 0-9, then the symbols.
PLUS_ID = 10
EQUALS_ID = 11

_NEG_INF = -jnp.inf

# Sequences per scoring pass of ``log_prob`` on a CPU (``score_chunk="auto"``).
# Measured at the attacker's shape on 2 cores: one pass over a batch of 1,024
# (24,576 positions) runs its wide products at about half the speed they reach
# on rows that stay in cache. Chunks of 32 scored 3.5x faster (6,970 against
# 1,995 sequences/s), and 2.6x faster under ``vmap`` over 5 seeds of 2,048
# (6,684 against 2,588, where chunks of 128 per seed reached only 5,122).
# GPUs and TPUs score the whole batch in one pass.
CPU_SCORE_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the decoder (frozen and hashable: usable as a static arg).

  The default ids fit the addition vocabulary in 16 ids: digits ``0..9``,
  ``'+' = 10``, ``'=' = 11``, BOS ``12``, EOS ``13``, PAD ``14``; id ``15`` is
  unused (the model may still emit it; a task gives it zero reward or the model
  learns it away).

  Attributes:
    vocab_size: number of token ids, BOS/EOS/PAD included.
    max_len: fixed padded sequence length, BOS excluded. Positional embeddings
      and KV caches have ``max_len + 1`` slots: BOS plus ``max_len`` tokens.
    num_layers: number of Transformer blocks.
    width: residual-stream width (must be divisible by ``num_heads``).
    num_heads: attention heads per block.
    mlp_ratio: MLP hidden width is ``mlp_ratio * width``.
    bos_id: begin-of-sequence id, only ever an input (never stored in ``x``).
    eos_id: end-of-sequence id.
    pad_id: padding id, only after the first EOS.
    dtype: activation and cache dtype (params are float32; logits are cast to
      float32 before any softmax).
  """

  vocab_size: int = 16
  max_len: int = 24
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  bos_id: int = 12
  eos_id: int = 13
  pad_id: int = 14
  dtype: Any = jnp.float32

  def __post_init__(self):
    ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
    for name, i in ids.items():
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"{name}={i} must be in [0, vocab_size={self.vocab_size})")
    if len(set(ids.values())) != 3:
      raise ValueError(f"bos_id, eos_id, pad_id must be distinct, got {ids}")
    if self.vocab_size < 4:
      raise ValueError(f"vocab_size must be >= 4 (BOS, EOS, PAD and one content "
                       f"token), got {self.vocab_size}")
    if self.max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {self.max_len}")
    if self.num_layers < 1 or self.num_heads < 1 or self.mlp_ratio < 1:
      raise ValueError("num_layers, num_heads and mlp_ratio must be >= 1")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} must be divisible by "
                       f"num_heads={self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def num_positions(self) -> int:
    """Positional slots (BOS + ``max_len`` tokens); also the KV cache length."""
    return self.max_len + 1

  def replace(self, **kwargs) -> "TransformerConfig":
    return dataclasses.replace(self, **kwargs)


class LayerCache(NamedTuple):
  """Keys and values of one layer, each ``[batch, heads, max_len + 1, head_dim]``.

  Heads before positions: one decoding step's attention is then a batched
  matrix-vector product over ``(batch, heads)`` with no transpose of the cache
  (with positions first, XLA on a CPU transposed the whole cache at every step,
  which took most of the sampling time at the attacker's shape).
  """

  k: Array
  v: Array


KVCache = tuple[LayerCache, ...]  # one entry per layer


def _attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Scaled dot-product attention.

  Args:
    q: ``[B, Tq, H, D]`` queries.
    k: ``[B, S, H, D]`` keys.
    v: ``[B, S, H, D]`` values.
    mask: ``bool[Tq, S]``, True where query ``i`` may attend to key ``j``.

  Returns:
    ``[B, Tq, H, D]``.
  """
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
  weights = _masked_softmax(scores, mask[None, None], v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _masked_softmax(scores: Array, mask: Array, dtype) -> Array:
  """Softmax over the last axis in float32, masked-out keys at weight 0."""
  scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _attend_cached(q: Array, k: Array, v: Array, pos: Array) -> Array:
  """One decoding step's attention against a cache laid out heads first.

  Args:
    q: ``[B, H, D]`` the step's queries.
    k: ``[B, H, S, D]`` cached keys (slots after ``pos`` are masked out).
    v: ``[B, H, S, D]`` cached values.
    pos: the step's position (int scalar); keys ``0..pos`` are attended.

  Returns:
    ``[B, H, D]``.
  """
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bhd,bhsd->bhs", q * scale, k)
  weights = _masked_softmax(scores, (jnp.arange(k.shape[2]) <= pos)[None, None],
                            v.dtype)
  return jnp.einsum("bhs,bhsd->bhd", weights, v)


class _Block(nn.Module):
  """Pre-LayerNorm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    dense = dict(dtype=cfg.dtype, param_dtype=jnp.float32)
    self.ln_attn = nn.LayerNorm(dtype=cfg.dtype, name="ln_attn")
    self.qkv = nn.DenseGeneral(features=(3, cfg.num_heads, cfg.head_dim),
                               name="qkv", **dense)
    self.attn_out = nn.DenseGeneral(features=cfg.width, axis=(-2, -1),
                                    name="attn_out", **dense)
    self.ln_mlp = nn.LayerNorm(dtype=cfg.dtype, name="ln_mlp")
    self.mlp_in = nn.Dense(cfg.mlp_ratio * cfg.width, name="mlp_in", **dense)
    self.mlp_out = nn.Dense(cfg.width, name="mlp_out", **dense)

  def _mlp(self, x):
    return x + self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))

  def qkv_of(self, x: Array) -> Array:
    """Queries, keys and values ``[..., 3, H, D]`` of the residual ``x``."""
    return self.qkv(self.ln_attn(x))

  def __call__(self, x: Array, qkv: Array | None = None) -> Array:
    """Full causal pass: ``x`` is ``[B, T, W]``; ``qkv`` if already computed."""
    t = x.shape[1]
    if qkv is None:
      qkv = self.qkv_of(x)  # [B, T, 3, H, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    mask = jnp.tril(jnp.ones((t, t), bool))
    x = x + self.attn_out(_attend(q, k, v, mask))
    return self._mlp(x)

  def decode(self, x: Array, pos: Array, cache: LayerCache,
             qkv: Array | None = None) -> tuple[Array, LayerCache]:
    """One step: ``x`` is ``[B, 1, W]`` at position ``pos``; writes slot ``pos``.

    ``qkv`` ``[B, 1, 3, H, D]``: the step's queries, keys and values if already
    computed (the first block's come from the input tables).
    """
    if qkv is None:
      qkv = self.qkv_of(x)
    qkv = qkv[:, 0]  # [B, 3, H, D]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [B, H, D] each
    zero = jnp.zeros((), jnp.int32)
    idx = (zero, zero, pos, zero)
    k_all = jax.lax.dynamic_update_slice(cache.k, k[:, :, None].astype(cache.k.dtype),
                                         idx)
    v_all = jax.lax.dynamic_update_slice(cache.v, v[:, :, None].astype(cache.v.dtype),
                                         idx)
    x = x + self.attn_out(_attend_cached(q, k_all, v_all, pos)[:, None])
    return self._mlp(x), LayerCache(k_all, v_all)


class InputTables(NamedTuple):
  """The first block's inputs for every (position, token) pair.

  Row ``p * vocab_size + t`` is for token ``t`` at position ``p``. The first
  block's input is ``embed[t] + pos_embed[p]``, and its queries, keys and values
  are a function of that vector alone, so a model with few (position, token)
  pairs can compute them once and look them up instead of running the first
  LayerNorm and QKV projection on every token (see ``make_transformer``'s
  ``input_tables``).

  Attributes:
    residual: ``[P * V, W]`` input vectors of the first block.
    qkv: ``[P * V, 3, H, D]`` the first block's queries, keys and values.
  """

  residual: Array
  qkv: Array


class TransformerLM(nn.Module):
  """Causal decoder-only LM; returns raw (unmasked) next-token logits.

  ``__call__`` runs the full causal forward on input tokens (BOS already
  prepended) at positions ``0..T-1``; ``decode`` runs one token at a given
  position against an explicit cache. Both use the same parameters, and both
  may take the :class:`InputTables` of ``input_tables`` instead of computing
  the first block's input and projections per token (same results).
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(cfg.vocab_size, cfg.width, dtype=cfg.dtype,
                          embedding_init=nn.initializers.normal(0.02), name="embed")
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                (cfg.num_positions, cfg.width), jnp.float32)
    self.blocks = [_Block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
    self.ln_final = nn.LayerNorm(dtype=cfg.dtype, name="ln_final")
    self.head = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, param_dtype=jnp.float32,
                         name="head")

  def input_tables(self) -> InputTables:
    """The :class:`InputTables` of the current parameters (all positions)."""
    cfg = self.config
    residual = (self.embed.embedding[None].astype(cfg.dtype)
                + self.pos_embed[:, None].astype(cfg.dtype))  # [P, V, W]
    residual = residual.reshape(cfg.num_positions * cfg.vocab_size, cfg.width)
    return InputTables(residual, self.blocks[0].qkv_of(residual))

  def _first_block_inputs(self, tokens: Array, positions: Array,
                          tables: InputTables | None):
    """``(x, qkv or None)`` of ``tokens`` ``int32[B, T]`` at ``positions``."""
    if tables is None:
      pe = jnp.take(self.pos_embed, positions, axis=0)  # [T, W]
      return self.embed(tokens) + pe[None].astype(self.config.dtype), None
    v = self.config.vocab_size
    rows = positions[None, :] * v + tokens  # [B, T]
    # An id outside [0, V) gets NaN inputs, as the embedding lookup gives it.
    rows = jnp.where((tokens >= 0) & (tokens < v), rows, tables.residual.shape[0])
    return (jnp.take(tables.residual, rows, axis=0),
            jnp.take(tables.qkv, rows, axis=0))

  def __call__(self, tokens: Array, tables: InputTables | None = None) -> Array:
    """``tokens`` ``int32[B, T]`` (T <= max_len + 1) -> logits ``f32[B, T, V]``."""
    t = tokens.shape[1]
    x, qkv = self._first_block_inputs(tokens, jnp.arange(t), tables)
    for i, block in enumerate(self.blocks):
      x = block(x, qkv if i == 0 else None)
    return self.head(self.ln_final(x)).astype(jnp.float32)

  def decode(self, token: Array, pos: Array, cache: KVCache,
             tables: InputTables | None = None) -> tuple[Array, KVCache]:
    """``token`` ``int32[B]`` at position ``pos`` -> (logits ``f32[B, V]``, cache)."""
    x, qkv = self._first_block_inputs(token[:, None], pos[None], tables)  # [B,1,W]
    new_cache = []
    for i, (block, layer_cache) in enumerate(zip(self.blocks, cache)):
      x, layer_cache = block.decode(x, pos, layer_cache, qkv if i == 0 else None)
      new_cache.append(layer_cache)
    logits = self.head(self.ln_final(x)).astype(jnp.float32)
    return logits[:, 0], tuple(new_cache)


class Transformer(NamedTuple):
  """All functions of a Transformer model; ``model`` is the generic contract.

  Shapes: ``B`` batch, ``L = max_len``, ``V = vocab_size``. Every logits output
  has BOS and PAD masked to ``-inf`` (it is the distribution of the next token
  of a sequence that has not emitted EOS yet; after EOS the next token is PAD
  deterministically, which ``sample``/``log_prob``/``greedy_decode`` apply).

  Attributes:
    model: the :class:`GenerativeModel` (``init``, ``log_prob``, ``sample``,
      ``event_shape == (L,)``, ``dtype == int32``).
    config: the :class:`TransformerConfig`.
    module: the underlying :class:`TransformerLM` linen module.
    logits: ``logits(params, x) -> f32[B, T, V]`` teacher-forced logits of
      ``x`` ``int32[B, T]`` (``T <= L + 1``): row ``t`` predicts ``x[:, t]``
      given BOS and ``x[:, :t]``. One full forward pass.
    next_token_logits_full: ``(params, x) -> f32[B, V]``, logits of the token
      after the prefix ``x`` ``int32[B, T]`` (``0 <= T <= L``), by a full
      forward pass on ``[BOS, x]``.
    next_token_logits_cached: same result, computed by feeding ``[BOS, x]``
      through ``decode_step`` one token at a time in a ``lax.scan``.
    init_cache: ``init_cache(batch, length=max_len + 1) -> KVCache`` of zeros.
    decode_step: ``decode_step(params, cache, token, pos, tables=None) ->
      (f32[B, V], cache)``: feeds ``token`` ``int32[B]`` at position ``pos``
      (int scalar, ``0`` for BOS, ``t + 1`` for ``x[:, t]``) and returns the
      logits of the following token. ``tables``: the
      :class:`InputTables` of ``compute_input_tables(params)``, for a loop
      that calls ``decode_step`` many times under the same parameters (the
      same result; without them a step at or above the tables' break-even
      batch, ``num_positions * vocab_size`` tokens, computes them itself).
    compute_input_tables: ``compute_input_tables(params) -> InputTables``, the
      first block's inputs and projections for every (position, token) pair.
    greedy_decode: ``greedy_decode(params, prefix, num_steps) -> int32[B,
      num_steps]``: argmax continuation of the prefixes ``int32[B, P]``.
    greedy_decode_ragged: ``greedy_decode_ragged(params, tokens, lengths,
      num_steps) -> int32[B, num_steps]``: argmax continuation of row ``i``'s
      prefix ``tokens[i, :lengths[i]]`` (prefixes of different lengths).
    token_log_prob: ``token_log_prob(params, x) -> f32[B, L]``, the per-position
      terms of ``log_prob`` (``log p(x_t | x_<t)`` before and at the first EOS,
      0 for PAD after it); used by unlikelihood training's token form.
  """

  model: GenerativeModel
  config: TransformerConfig
  module: TransformerLM
  logits: Callable[[Params, Array], Array]
  next_token_logits_full: Callable[[Params, Array], Array]
  next_token_logits_cached: Callable[[Params, Array], Array]
  init_cache: Callable[..., KVCache]
  decode_step: Callable[..., tuple[Array, KVCache]]
  greedy_decode: Callable[[Params, Array, int], Array]
  greedy_decode_ragged: Callable[[Params, Array, Array, int], Array]
  token_log_prob: Callable[[Params, Array], Array]
  compute_input_tables: Callable[[Params], InputTables]


def _check_tokens(x: Array, max_t: int, what: str):
  chex.assert_rank(x, 2, custom_message=f"{what} must be int[batch, length]")
  chex.assert_type(x, int, custom_message=f"{what} must hold integer token ids")
  if x.shape[1] > max_t:
    raise ValueError(f"{what} has length {x.shape[1]} > {max_t}")


def decode_segment_ends(num_steps: int) -> tuple[int, ...]:
  """Ends of the decoding segments of ``num_steps`` steps (see ``generate``).

  Four segments of (nearly) equal length: ``24 -> (6, 12, 18, 24)``. Step ``t``
  of a segment ending at ``e`` attends over a cache of ``e`` slots instead of
  ``max_len + 1``. Measured at the attacker's shape (batch 1024, 2 CPU cores),
  sampling ran about 15% faster than with one full-length cache (step 6: 123k
  tokens/s against 106k; doubling ends 8, 16, 24: 115k).
  """
  return tuple(sorted({-(-num_steps * k // 4) for k in range(1, 5)}))


def resolve_score_chunk(score_chunk: int | str | None, batch: int) -> int | None:
  """Sequences per scoring pass for a batch of ``batch``; ``None`` for one pass.

  Args:
    score_chunk: ``"auto"`` (:data:`CPU_SCORE_CHUNK` when JAX's default backend
      is a CPU, one pass on accelerators), a positive int, or ``None`` (one pass).
    batch: number of sequences to score.

  Returns:
    The chunk size, or ``None`` when the batch is scored in one pass (it is no
    larger than one chunk).
  """
  if score_chunk == "auto":
    score_chunk = CPU_SCORE_CHUNK if jax.default_backend() == "cpu" else None
  if score_chunk is None or batch <= score_chunk:
    return None
  return score_chunk


def _check_score_chunk(score_chunk):
  if score_chunk in ("auto", None):
    return
  if isinstance(score_chunk, bool) or not isinstance(score_chunk, int) or score_chunk < 1:
    raise ValueError(f"score_chunk must be 'auto', None or a positive int, got "
                     f"{score_chunk!r}")


def resolve_input_tables(input_tables: bool | str, config: TransformerConfig,
                         num_tokens: int) -> bool:
  """Whether a pass feeding ``num_tokens`` tokens uses :class:`InputTables`.

  ``"auto"``: when ``num_tokens`` is at least the tables' row count,
  ``config.num_positions * config.vocab_size`` (computing the tables then costs
  no more than the per-token work they replace); ``True``/``False``: always/never.
  """
  _check_input_tables(input_tables)
  if input_tables == "auto":
    return num_tokens >= config.num_positions * config.vocab_size
  return input_tables


def _check_input_tables(input_tables):
  if not (isinstance(input_tables, bool) or input_tables == "auto"):
    raise ValueError(f"input_tables must be 'auto', True or False, got "
                     f"{input_tables!r}")


def make_transformer(config: TransformerConfig = TransformerConfig(), *,
                     score_chunk: int | str | None = "auto",
                     input_tables: bool | str = "auto") -> Transformer:
  """Builds the Transformer and all its pure functions (see :class:`Transformer`).

  Args:
    config: model hyperparameters.
    score_chunk: sequences per forward pass of ``log_prob`` and
      ``token_log_prob`` (a speed setting: the results are the same up to float
      rounding). A larger batch is scored chunk by chunk in a loop, each chunk's
      pass rematerialised under differentiation so that gradients keep no more
      activations than one pass; a batch that is not a multiple is padded.
      ``"auto"`` (default): :data:`CPU_SCORE_CHUNK` on a CPU, one pass on
      GPUs and TPUs (:func:`resolve_score_chunk`); ``None``: always one pass.
    input_tables: whether a pass looks up the first block's input vectors and
      queries, keys and values in :class:`InputTables` (computed once per call
      for all ``num_positions * vocab_size`` (position, token) pairs) instead
      of computing them for every token (a speed setting: the results are the
      same). ``"auto"`` (default): when the call feeds at least as many tokens
      as the tables have rows; at the attacker's shape (400 rows) that is any
      batch of 17 or more sequences. Measured on 2 CPU cores at batch 1,024:
      sampling 7% and scoring 10% faster, training at microbatches of 32 5%.
      ``True``/``False``: always/never.

  Returns:
    A :class:`Transformer`; its ``.model`` is the :class:`GenerativeModel`.
  """
  _check_score_chunk(score_chunk)
  _check_input_tables(input_tables)
  cfg = config
  module = TransformerLM(cfg)
  L, V = cfg.max_len, cfg.vocab_size  # pylint: disable=invalid-name
  # Ids that are never emitted before EOS.
  forbidden = jnp.zeros((V,), bool).at[jnp.array([cfg.bos_id, cfg.pad_id])].set(True)

  def mask_logits(logits):
    return jnp.where(forbidden, _NEG_INF, logits)

  def init(key: PRNGKey) -> Params:
    tokens = jnp.zeros((1, cfg.num_positions), jnp.int32)
    return module.init(key, tokens)["params"]

  def compute_input_tables(params) -> InputTables:
    return module.apply({"params": params}, method=TransformerLM.input_tables)

  def tables_for(params, num_tokens: int) -> InputTables | None:
    """The input tables for a call that feeds ``num_tokens`` tokens, or None."""
    if not resolve_input_tables(input_tables, cfg, num_tokens):
      return None
    return compute_input_tables(params)

  def with_bos(x):
    bos = jnp.full((x.shape[0], 1), cfg.bos_id, jnp.int32)
    return jnp.concatenate([bos, x.astype(jnp.int32)], axis=1)

  def logits_fn(params, x):
    _check_tokens(x, L + 1, "x")
    inputs = with_bos(x)[:, :-1]  # [B, T]: BOS, x_0 .. x_{T-2}
    return logits_of_inputs(params, inputs, tables_for(params, inputs.size))

  def logits_of_inputs(params, inputs, tables):
    return mask_logits(module.apply({"params": params}, inputs, tables))

  def next_token_logits_full(params, x):
    _check_tokens(x, L, "x")
    inputs = with_bos(x)
    return logits_of_inputs(params, inputs, tables_for(params, inputs.size))[:, -1]

  def init_cache(batch: int, length: int = cfg.num_positions) -> KVCache:
    shape = (batch, cfg.num_heads, length, cfg.head_dim)
    return tuple(LayerCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
                 for _ in range(cfg.num_layers))

  def grow_cache(cache: KVCache, length: int) -> KVCache:
    def grow(a):
      return jnp.pad(a, ((0, 0), (0, 0), (0, length - a.shape[2]), (0, 0)))
    return jax.tree.map(grow, cache)

  def raw_decode(params, cache, token, pos, tables=None):
    return module.apply({"params": params}, token, pos, cache, tables,
                        method=TransformerLM.decode)

  def decode_step(params, cache, token, pos, tables=None):
    chex.assert_rank(token, 1, custom_message="token must be int[batch]")
    chex.assert_type(token, int, custom_message="token must be an integer id")
    chex.assert_shape(cache[0].k, (token.shape[0], cfg.num_heads,
                                   cfg.num_positions, cfg.head_dim),
                      custom_message="cache does not match token batch / config")
    if tables is None:
      tables = tables_for(params, token.shape[0])
    else:
      rows = cfg.num_positions * cfg.vocab_size
      chex.assert_shape(tables.qkv, (rows, 3, cfg.num_heads, cfg.head_dim),
                        custom_message="tables do not match the config "
                        "(use compute_input_tables(params))")
    logits, cache = raw_decode(params, cache, token.astype(jnp.int32),
                               jnp.asarray(pos, jnp.int32), tables)
    return mask_logits(logits), cache

  def next_token_logits_cached(params, x):
    _check_tokens(x, L, "x")
    inputs = with_bos(x).T  # [T + 1, B]
    tables = tables_for(params, inputs.size)

    def step(cache, inp):
      pos, tok = inp
      logits, cache = raw_decode(params, cache, tok, pos, tables)
      return cache, logits

    _, logits = jax.lax.scan(
        step, init_cache(x.shape[0]),
        (jnp.arange(inputs.shape[0], dtype=jnp.int32), inputs))
    return mask_logits(logits[-1])

  def generate(params, batch, num_steps, choose, keys=None, forced=None,
               forced_lengths=None):
    """Decodes ``num_steps`` tokens x_0.. from BOS; returns ``int32[B, steps]``.

    ``choose(logits, key) -> int32[B]`` picks a token from masked logits; where
    ``forced`` (``int32[P, B]``) is given, tokens ``x_0..x_{P-1}`` are forced,
    or, if ``forced_lengths`` (``int32[B]``) is given too, row ``i``'s tokens
    ``x_0..x_{forced_lengths[i]-1}``. After the first EOS every token is PAD.
    """
    num_forced = 0 if forced is None else forced.shape[0]
    if forced is not None:  # pad to num_steps rows; the flag picks forced rows
      filler = jnp.zeros((num_steps - num_forced, batch), jnp.int32)
      forced = jnp.concatenate([forced.astype(jnp.int32), filler], axis=0)
    xs = {"pos": jnp.arange(num_steps, dtype=jnp.int32)}
    if keys is not None:
      xs["key"] = keys
    if forced is not None:
      xs["forced"] = forced

    tables = tables_for(params, batch * num_steps)  # once, outside the loop

    def step(carry, inp):
      cache, tok_in, done = carry
      logits, cache = raw_decode(params, cache, tok_in, inp["pos"], tables)
      tok = choose(mask_logits(logits), inp.get("key"))
      if forced is not None:
        limit = num_forced if forced_lengths is None else forced_lengths
        tok = jnp.where(inp["pos"] < limit, inp["forced"], tok)
      tok = jnp.where(done, cfg.pad_id, tok).astype(jnp.int32)
      done = done | (tok == cfg.eos_id)
      return (cache, tok, done), tok

    # The steps run in segments, each a lax.scan against a cache only as long as
    # its last position needs: early steps read fewer cache slots (the masked
    # slots after `pos` carry weight exactly 0, so the result is the same).
    ends = decode_segment_ends(num_steps)
    cache = init_cache(batch, ends[0])
    tok_in = jnp.full((batch,), cfg.bos_id, jnp.int32)
    done = jnp.zeros((batch,), bool)
    pieces, start = [], 0
    for end in ends:
      cache = grow_cache(cache, end)
      (cache, tok_in, done), toks = jax.lax.scan(
          step, (cache, tok_in, done), jax.tree.map(lambda a: a[start:end], xs))
      pieces.append(toks)
      start = end
    return jnp.concatenate(pieces, axis=0).T  # [B, num_steps]

  def sample(params, key, n):
    """``n`` i.i.d. sequences ``int32[n, L]`` at temperature 1 (``n`` static)."""
    if not isinstance(n, int) or n < 1:
      raise ValueError(f"n must be a positive Python int (static), got {n!r}")
    keys = jax.random.split(key, L)
    choose = lambda logits, k: jax.random.categorical(k, logits, axis=-1)
    return generate(params, n, L, choose, keys=keys)

  def greedy_decode(params, prefix, num_steps):
    """Argmax continuation ``int32[B, num_steps]`` of prefixes ``int32[B, P]``.

    All prefixes share the length ``P`` (static); they are not left-padded:
    they start right after BOS at position 0, like every stored sequence, so
    callers make them equal length (e.g. by zero-padding numbers to a fixed
    number of digits). ``P + num_steps <= max_len``; ``P == 0`` decodes from
    BOS. The prefix is fed through the KV cache token by token in the same
    ``lax.scan`` that decodes (tokens forced for the first ``P`` steps). If a
    prefix contains EOS, everything after it (prefix remainder included) is
    PAD. Returns only the ``num_steps`` new tokens.
    """
    _check_tokens(prefix, L, "prefix")
    p = prefix.shape[1]
    if not isinstance(num_steps, int) or num_steps < 1 or p + num_steps > L:
      raise ValueError(f"num_steps={num_steps!r} must be a positive int with "
                       f"P + num_steps <= max_len ({p} + {num_steps} > {L}?)")
    choose = lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tokens = generate(params, prefix.shape[0], p + num_steps, choose,
                      forced=prefix.T)
    return tokens[:, p:]

  def greedy_decode_ragged(params, tokens, lengths, num_steps):
    """Argmax continuations ``int32[B, num_steps]`` of ragged prefixes.

    Row ``i``'s prefix is ``tokens[i, :lengths[i]]`` (``tokens`` ``int32[B, P]``,
    ``P`` static; entries at and after ``lengths[i]`` are ignored), starting
    right after BOS at position 0. One ``lax.scan`` over ``P + num_steps``
    positions feeds every row through the KV cache: row ``i``'s token at
    position ``t`` is forced to ``tokens[i, t]`` while ``t < lengths[i]`` and is
    the argmax after, so the output row ``i`` holds the tokens at positions
    ``lengths[i] .. lengths[i] + num_steps - 1``. ``lengths`` may be traced (one
    compile for all lengths); values are clipped to ``[0, P]``. As in
    :func:`greedy_decode`, everything after an EOS (forced or decoded) is PAD.
    Requires ``P + num_steps <= max_len``.
    """
    _check_tokens(tokens, L, "tokens")
    chex.assert_shape(lengths, (tokens.shape[0],),
                      custom_message="lengths must be int[batch]")
    chex.assert_type(lengths, int, custom_message="lengths must be integers")
    p = tokens.shape[1]
    if not isinstance(num_steps, int) or num_steps < 1 or p + num_steps > L:
      raise ValueError(f"num_steps={num_steps!r} must be a positive int with "
                       f"P + num_steps <= max_len ({p} + {num_steps} > {L}?)")
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, p)
    choose = lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out = generate(params, tokens.shape[0], p + num_steps, choose,
                   forced=tokens.T, forced_lengths=lengths)  # [B, P + steps]
    idx = lengths[:, None] + jnp.arange(num_steps, dtype=jnp.int32)[None, :]
    return jnp.take_along_axis(out, idx, axis=1)

  def token_log_prob(params, x):
    """Per-position ``log p(x_t | x_<t)`` ``f32[B, L]`` of ``x`` ``int32[B, L]``.

    Content positions (up to and including the first EOS) hold the token's
    log-probability; PAD after the first EOS holds 0 (probability 1); an
    impossible token holds ``-inf``. ``log_prob`` is the sum over positions.
    Scored in chunks of ``score_chunk`` sequences (see :func:`make_transformer`).
    """
    return token_log_prob_prepared(params, prepare_scoring(params, x), x)

  def check_scored(x):
    chex.assert_rank(x, 2, custom_message="x must be int[batch, max_len]")
    chex.assert_axis_dimension(x, 1, L, custom_message=f"x must have length {L}")
    chex.assert_type(x, int, custom_message="x must hold integer token ids")

  def prepare_scoring(params, x):
    """The input tables for scoring a batch shaped like ``x`` (or None)."""
    check_scored(x)
    return tables_for(params, x.size)

  def token_log_prob_prepared(params, tables, x):
    """:func:`token_log_prob` with the input tables given (None: none used)."""
    check_scored(x)
    x = x.astype(jnp.int32)
    batch = x.shape[0]
    chunk = resolve_score_chunk(score_chunk, batch)
    if chunk is None:
      return one_pass_token_log_prob(params, x, tables)
    pad = -batch % chunk
    if pad:  # filler rows: EOS then PAD, a valid sequence (finite log-prob)
      filler = jnp.full((pad, L), cfg.pad_id, jnp.int32).at[:, 0].set(cfg.eos_id)
      x = jnp.concatenate([x, filler], axis=0)
    scored = optax.microbatch(
        jax.checkpoint(one_pass_token_log_prob), argnums=1, microbatch_size=chunk,
        accumulator=optax.microbatching.AccumulationType.CONCAT)(params, x, tables)
    return scored[:batch]

  def one_pass_token_log_prob(params, x, tables):
    in_range = (x >= 0) & (x < V)
    x_safe = jnp.clip(x, 0, V - 1)  # out-of-range ids would embed as NaN
    inputs = with_bos(x_safe)[:, :-1]
    logp = jax.nn.log_softmax(logits_of_inputs(params, inputs, tables),
                              axis=-1)  # [B, L, V]
    tok_logp = jnp.take_along_axis(logp, x_safe[..., None], axis=-1)[..., 0]
    tok_logp = jnp.where(in_range, tok_logp, _NEG_INF)
    is_eos = x == cfg.eos_id
    after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0  # an EOS strictly before
    # Content positions are scored; after the first EOS, PAD has prob 1.
    per_pos = jnp.where(after_eos, jnp.where(x == cfg.pad_id, 0.0, _NEG_INF),
                        tok_logp)
    return per_pos

  def log_prob_prepared(params, tables, x):
    """Exact ``log p(x)`` ``f32[B]`` of ``x`` ``int32[B, L]`` (see module doc)."""
    return jnp.sum(token_log_prob_prepared(params, tables, x), axis=1)

  # The input tables depend on the parameters alone: microbatched training
  # computes them once per step (see SplitLogProb).
  log_prob = SplitLogProb(prepare=prepare_scoring, apply=log_prob_prepared)
  model = GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                          event_shape=(L,), dtype=jnp.int32)
  return Transformer(model=model, config=cfg, module=module, logits=logits_fn,
                     next_token_logits_full=next_token_logits_full,
                     next_token_logits_cached=next_token_logits_cached,
                     init_cache=init_cache, decode_step=decode_step,
                     greedy_decode=greedy_decode,
                     greedy_decode_ragged=greedy_decode_ragged,
                     token_log_prob=token_log_prob,
                     compute_input_tables=compute_input_tables)


def make_transformer_model(config: TransformerConfig = TransformerConfig()
                           ) -> GenerativeModel:
  """Returns the :class:`GenerativeModel` of a Transformer (see module doc).

  Params are the linen ``params`` dict of :class:`TransformerLM`; a sample is
  ``int32[max_len]`` without BOS, PAD after the first EOS.

  Args:
    config: model hyperparameters.

  Returns:
    A :class:`GenerativeModel` with ``event_shape == (max_len,)``, ``int32``.
  """
  return make_transformer(config).model
