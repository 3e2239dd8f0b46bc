"""Pure functions of a pretrained decoder, and its prompted generative model.

:func:`make_decoder` wraps a :class:`~banel_jax.models.hf.config.DecoderConfig`'s
Flax module in pure functions (:class:`Decoder`): the full forward pass, the
prompt's prefill, and one KV-cached decoding step.

:func:`make_prompted_model` builds ``p(completion | prompt)`` for one fixed prompt
(token ids) as a :class:`~banel_jax.GenerativeModel` over completions of
``max_new_tokens`` ``int32`` tokens:

* Tokens up to and including the first end token (any of ``end_ids``) are the
  completion, each drawn from the model's next-token distribution (at
  ``temperature``) given the prompt and the tokens before it.
* Every position after the first end token holds ``pad_id`` with probability 1
  (log-probability 0); any other token there has log-probability ``-inf``, as
  has an id outside ``[0, vocab_size)``.
* A completion with no end token within ``max_new_tokens`` is a valid,
  truncated completion scored over all its tokens.

So ``log_prob`` counts the completion's tokens only, ``exp(log_prob)`` sums to 1
over all ``int32[max_new_tokens]`` arrays, and ``sample`` draws from that same
distribution. Each call of ``sample`` and ``log_prob`` runs the prompt through
the model once (batch 1) and shares its keys and values with every row: the
prompt's cache is never copied per row. ``log_prob`` is a
:class:`~banel_jax.SplitLogProb` whose ``prepare`` is that prefill, so
microbatched training runs it once per step. ``sample`` decodes in one
``lax.scan`` against a cache of ``max_new_tokens`` slots.

Example (a tiny random Llama; :func:`~banel_jax.models.hf.load_pretrained` reads
a real one):

>>> import jax
>>> from banel_jax.models import hf
>>> cfg = hf.DecoderConfig(model_type="llama", vocab_size=11, hidden_size=16,
...     num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32,
...     max_positions=64, norm_eps=1e-6, activation="silu",
...     tie_word_embeddings=True, qkv_bias=False, out_bias=False, mlp_bias=False)
>>> gen = hf.make_prompted_model(cfg, prompt=[1, 5, 7], max_new_tokens=6,
...                              end_ids=[2], pad_id=0)
>>> params = gen.model.init(jax.random.key(0))
>>> x = gen.model.sample(params, jax.random.key(1), 4)
>>> x.shape, gen.model.log_prob(params, x).shape
((4, 6), (4,))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import banel_jax as bj
from banel_jax.models.hf.config import DecoderConfig
from banel_jax.models.hf.modules import LayerKV, module_for

Array = jax.Array
Params = Any
KV = tuple[LayerKV, ...]  # one entry per layer


class PromptCache(NamedTuple):
  """A prompt run through the model once (batch 1), shared by every row.

  Attributes:
    kv: one :class:`LayerKV` per layer of ``[num_kv_heads, P, head_dim]`` keys
      (rotary-embedded) and values of the prompt's ``P`` tokens.
    next_logits: ``f32[vocab_size]`` logits of the token after the prompt.
  """

  kv: KV
  next_logits: Array


class Decoder(NamedTuple):
  """Pure functions of one decoder architecture (parameters passed explicitly).

  Attributes:
    config: the :class:`DecoderConfig`.
    module: the Flax module (``LlamaLM`` or ``GPT2LM``).
    init: ``init(key) -> params``, random parameters of the architecture.
    logits: ``logits(params, tokens) -> f32[B, T, V]``: the full causal
      forward of ``tokens`` ``int32[B, T]`` at positions ``0 .. T-1``; row ``t``
      is the distribution of the token after ``tokens[:, t]``.
    prefill: ``prefill(params, prompt) -> PromptCache`` of a prompt
      ``int32[P]`` (``P >= 1``).
    init_cache: ``init_cache(batch, slots) -> KV`` of zeros (the config dtype).
    decode_step: ``decode_step(params, prompt_cache, cache, token, slot) ->
      (f32[B, V], cache)``: feeds ``token`` ``int32[B]`` at position ``P + slot``
      (writing cache slot ``slot``) and returns the logits of the next token.
    score_hidden: ``score_hidden(params, prompt_cache, x) -> [B, C, D]``:
      final hidden states of completion tokens ``x`` ``int32[B, C]`` after the
      prompt, in one causal pass (no cache).
    head: ``head(params, h) -> f32[..., V]``, the logits of hidden states.
  """

  config: DecoderConfig
  module: nn.Module
  init: Callable[[Array], Params]
  logits: Callable[[Params, Array], Array]
  prefill: Callable[[Params, Array], PromptCache]
  init_cache: Callable[[int, int], KV]
  decode_step: Callable[..., tuple[Array, KV]]
  score_hidden: Callable[[Params, PromptCache, Array], Array]
  head: Callable[[Params, Array], Array]


def _check_tokens(x, what: str):
  chex.assert_rank(x, 2, custom_message=f"{what} must be int[batch, length]")
  chex.assert_type(x, int, custom_message=f"{what} must hold integer token ids")


def make_decoder(config: DecoderConfig) -> Decoder:
  """The :class:`Decoder` of ``config`` (see the class for its functions)."""
  module = module_for(config)
  cfg = config

  def init(key):
    return module.init(key, jnp.zeros((1, 1), jnp.int32))["params"]

  def apply(params, *args, method):
    return module.apply({"params": params}, *args, method=method)

  def logits(params, tokens):
    _check_tokens(tokens, "tokens")
    return apply(params, tokens.astype(jnp.int32), method=type(module).__call__)

  def prefill(params, prompt):
    chex.assert_rank(prompt, 1, custom_message="prompt must be int[length]")
    chex.assert_type(prompt, int, custom_message="prompt must hold integer ids")
    if prompt.shape[0] < 1:
      raise ValueError("the prompt must hold at least one token (e.g. BOS)")
    h, kv = apply(params, prompt.astype(jnp.int32)[None], 0,
                  method=type(module).hidden)
    kv = tuple(LayerKV(layer.k[0], layer.v[0]) for layer in kv)
    return PromptCache(kv, apply(params, h[0, -1], method=type(module).head))

  def init_cache(batch, slots):
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    return tuple(LayerKV(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
                 for _ in range(cfg.num_layers))

  def decode_step(params, prompt_cache, cache, token, slot):
    chex.assert_rank(token, 1, custom_message="token must be int[batch]")
    chex.assert_type(token, int, custom_message="token must hold integer ids")
    p = prompt_cache.kv[0].k.shape[1]
    h, cache = apply(params, token.astype(jnp.int32)[:, None],
                     p + jnp.asarray(slot, jnp.int32), cache, prompt_cache.kv,
                     method=type(module).hidden)
    return apply(params, h[:, 0], method=type(module).head), cache

  def score_hidden(params, prompt_cache, x):
    _check_tokens(x, "x")
    p = prompt_cache.kv[0].k.shape[1]
    h, _ = apply(params, x.astype(jnp.int32), p, None, prompt_cache.kv,
                 method=type(module).hidden)
    return h

  def head(params, h):
    return apply(params, h, method=type(module).head)

  return Decoder(config=cfg, module=module, init=init, logits=logits,
                 prefill=prefill, init_cache=init_cache, decode_step=decode_step,
                 score_hidden=score_hidden, head=head)


class PromptedModel(NamedTuple):
  """A prompted decoder; ``model`` is the generic contract.

  Attributes:
    model: the :class:`~banel_jax.GenerativeModel` of completions
      (``event_shape == (max_new_tokens,)``, ``int32``).
    decoder: the underlying :class:`Decoder`.
    prompt: the prompt ``int32[P]``.
    end_ids: the end-token ids (a completion stops at the first of them).
    pad_id: the id after the first end token.
    token_log_prob: ``token_log_prob(params, x) -> f32[B, C]``, the terms of
      ``log_prob`` per position (0 for padding after the first end token).
    sample_with_logits: ``sample_with_logits(params, key, n) -> (x, logits)``:
      ``sample``'s completions and, ``f32[n, C, V]``, the (temperature-scaled)
      logits each token was drawn from.
  """

  model: bj.GenerativeModel
  decoder: Decoder
  prompt: Array
  end_ids: tuple[int, ...]
  pad_id: int
  token_log_prob: Callable[[Params, Array], Array]
  sample_with_logits: Callable[[Params, Any, int], tuple[Array, Array]]


def _token_log_probs(head, h, targets, chunk):
  """``log_softmax(head(h))`` at ``targets``, ``f32[B, T]``, in time chunks.

  With ``chunk``, the logits are formed ``chunk`` positions at a time in a
  ``lax.map`` whose body is rematerialised under differentiation: no more than
  ``[B, chunk, V]`` logits live at once, forward or backward.
  """
  def score(h_part, t_part):
    logp = jax.nn.log_softmax(head(h_part), axis=-1)
    return jnp.take_along_axis(logp, t_part[..., None], axis=-1)[..., 0]

  b, t = targets.shape
  if chunk is None or t <= chunk:
    return score(h, targets)
  pad = -t % chunk
  n = (t + pad) // chunk
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  h = h.reshape(b, n, chunk, h.shape[-1]).swapaxes(0, 1)
  targets = targets.reshape(b, n, chunk).swapaxes(0, 1)
  out = jax.lax.map(lambda a: jax.checkpoint(score)(*a), (h, targets))
  return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def make_prompted_model(decoder: Decoder | DecoderConfig, prompt: Sequence[int] | Array,
                        max_new_tokens: int, *, end_ids: Sequence[int] | None = None,
                        pad_id: int | None = None, temperature: float = 1.0,
                        logit_chunk: int | None = 128) -> PromptedModel:
  """``p(completion | prompt)`` for a fixed prompt (see the module doc).

  Args:
    decoder: a :class:`Decoder` or its :class:`DecoderConfig`.
    prompt: the prompt's token ids (at least one; a BOS alone gives the
      unconditional model of the checkpoint).
    max_new_tokens: length ``C`` of a completion (static).
    end_ids: ids that end a completion (default: the config's
      ``eos_token_ids``). May be empty: completions then always have ``C``
      tokens.
    pad_id: the id after the first end token (default: the config's
      ``pad_token_id``, else the first end id; unused without end ids).
    temperature: the distribution is ``softmax(logits / temperature)``, in
      ``sample`` and ``log_prob`` alike.
    logit_chunk: ``log_prob`` forms the logits of at most this many positions
      at once (a memory setting: same results up to float rounding; ``None``:
      all at once). Scoring ``B`` completions holds ``B * logit_chunk *
      vocab_size`` float32 logits instead of ``B * C * vocab_size``.

  Returns:
    A :class:`PromptedModel`; its ``.model`` is the :class:`~banel_jax.GenerativeModel`.

  Raises:
    ValueError: an empty prompt, ids outside the vocabulary,
      ``max_new_tokens < 1``, or (GPT-2) a prompt plus completion longer than
      the learned positions.
  """
  if isinstance(decoder, DecoderConfig):
    decoder = make_decoder(decoder)
  cfg = decoder.config
  v = cfg.vocab_size
  prompt_np = np.asarray(prompt)
  if prompt_np.ndim != 1 or prompt_np.size < 1 or not np.issubdtype(prompt_np.dtype,
                                                                     np.integer):
    raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got "
                     f"shape {prompt_np.shape} dtype {prompt_np.dtype}")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
      or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  end_ids = tuple(int(i) for i in (cfg.eos_token_ids if end_ids is None else end_ids))
  if pad_id is None:  # 0 without end ids: never used, nothing is padded
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (
        end_ids[0] if end_ids else 0)
  ids = {"prompt": [int(i) for i in prompt_np], "end_ids": list(end_ids),
         "pad_id": [int(pad_id)]}
  for what, values in ids.items():
    bad = [i for i in values if not 0 <= i < v]
    if bad:
      raise ValueError(f"{what} holds ids outside [0, vocab_size={v}): {bad}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  if logit_chunk is not None and (isinstance(logit_chunk, bool)
                                  or not isinstance(logit_chunk, int) or logit_chunk < 1):
    raise ValueError(f"logit_chunk must be a positive int or None, got {logit_chunk!r}")
  p, c = prompt_np.size, max_new_tokens
  if cfg.family == "gpt2" and p + c > cfg.max_positions:
    raise ValueError(f"prompt ({p}) + max_new_tokens ({c}) exceeds the "
                     f"{cfg.max_positions} learned positions of the model")
  prompt_arr = jnp.asarray(prompt_np, jnp.int32)
  end_arr = jnp.asarray(end_ids, jnp.int32)
  pad_id = int(pad_id)

  def is_end(tok):
    return jnp.any(tok[..., None] == end_arr, axis=-1)

  def scaled(logits):
    return logits if temperature == 1.0 else logits / temperature

  def check_x(x):
    chex.assert_rank(x, 2, custom_message="x must be int[batch, max_new_tokens]")
    chex.assert_axis_dimension(x, 1, c, custom_message=f"x must have length {c}")
    chex.assert_type(x, int, custom_message="x must hold integer token ids")

  def prepare(params, x):
    """The prompt's cache (depends on ``params`` only)."""
    check_x(x)
    return decoder.prefill(params, prompt_arr)

  def token_log_prob_prepared(params, prompt_cache, x):
    check_x(x)
    x = x.astype(jnp.int32)
    in_range = (x >= 0) & (x < v)
    x_safe = jnp.clip(x, 0, v - 1)
    first = jax.nn.log_softmax(scaled(prompt_cache.next_logits))[x_safe[:, 0]]
    if c > 1:
      h = decoder.score_hidden(params, prompt_cache, x_safe[:, :-1])
      rest = _token_log_probs(lambda hh: scaled(decoder.head(params, hh)), h,
                              x_safe[:, 1:], logit_chunk)
      tok = jnp.concatenate([first[:, None], rest], axis=1)
    else:
      tok = first[:, None]
    tok = jnp.where(in_range, tok, -jnp.inf)
    ends = is_end(x)
    after_end = (jnp.cumsum(ends, axis=1) - ends) > 0
    return jnp.where(after_end, jnp.where(x == pad_id, 0.0, -jnp.inf), tok)

  def token_log_prob(params, x):
    return token_log_prob_prepared(params, prepare(params, x), x)

  def log_prob_prepared(params, prompt_cache, x):
    return jnp.sum(token_log_prob_prepared(params, prompt_cache, x), axis=1)

  def generate(params, key, n, keep_logits):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ValueError(f"n must be a positive Python int (static), got {n!r}")
    prompt_cache = decoder.prefill(params, prompt_arr)
    first = jnp.broadcast_to(scaled(prompt_cache.next_logits), (n, v))

    def step(carry, inp):
      cache, logits, done = carry
      slot, k = inp
      tok = jax.random.categorical(k, logits, axis=-1).astype(jnp.int32)
      tok = jnp.where(done, pad_id, tok)
      done = done | is_end(tok)
      next_logits, cache = decoder.decode_step(params, prompt_cache, cache, tok, slot)
      out = (tok, logits) if keep_logits else tok
      return (cache, scaled(next_logits), done), out

    carry = (decoder.init_cache(n, c), first, jnp.zeros((n,), bool))
    _, out = jax.lax.scan(step, carry, (jnp.arange(c, dtype=jnp.int32),
                                        jax.random.split(key, c)))
    if keep_logits:
      return out[0].T, out[1].swapaxes(0, 1)
    return out.T

  def sample(params, key, n):
    """``n`` i.i.d. completions ``int32[n, max_new_tokens]`` (``n`` static)."""
    return generate(params, key, n, False)

  def sample_with_logits(params, key, n):
    return generate(params, key, n, True)

  log_prob = bj.SplitLogProb(prepare=prepare, apply=log_prob_prepared)
  model = bj.GenerativeModel(init=decoder.init, log_prob=log_prob, sample=sample,
                             event_shape=(c,), dtype=jnp.int32)
  return PromptedModel(model=model, decoder=decoder, prompt=prompt_arr,
                       end_ids=end_ids, pad_id=pad_id, token_log_prob=token_log_prob,
                       sample_with_logits=sample_with_logits)
