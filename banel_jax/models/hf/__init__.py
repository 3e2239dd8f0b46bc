"""Pretrained decoders from local Hugging Face checkpoints, as generative models.

Supported ``model_type``: ``llama`` and ``qwen2`` (RMSNorm, rotary embeddings,
grouped-query attention, SwiGLU; Qwen2's query/key/value biases) and ``gpt2``
(learned positions, LayerNorm, GELU MLP). Everything is read from a local
directory; nothing is downloaded.

* :func:`load_config`, :func:`load_params`, :func:`load_pretrained`: a checkpoint
  directory (``config.json`` and ``model.safetensors`` or sharded
  ``model.safetensors.index.json``) into a :class:`DecoderConfig` and Flax
  params (float32, or ``dtype=jnp.bfloat16``).
* :func:`load_tokenizer`: a ``tokenizers.Tokenizer`` from ``tokenizer.json``.
* :func:`make_decoder`: pure functions of the architecture (:class:`Decoder`).
* :func:`make_prompted_model`: ``p(completion | prompt)`` for a fixed prompt as a
  :class:`~banel_jax.GenerativeModel` with a KV-cached ``lax.scan`` sampler.

Typical use::

  decoder, params = hf.load_pretrained("/path/to/Qwen2.5-0.5B-Instruct")
  tok = hf.load_tokenizer("/path/to/Qwen2.5-0.5B-Instruct")
  gen = hf.make_prompted_model(decoder, tok.encode(question).ids,
                               max_new_tokens=256)
  completions = gen.model.sample(params, key, 64)  # int32[64, 256]

Reading weights needs the ``safetensors`` package and tokenizers the
``tokenizers`` package; both are imported only when used.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from banel_jax.models.hf.config import (SUPPORTED_MODEL_TYPES, DecoderConfig,
                                        HFCheckpointError, config_from_hf)
from banel_jax.models.hf.generation import (Decoder, PromptCache, PromptedModel,
                                            make_decoder, make_prompted_model)
from banel_jax.models.hf.modules import GPT2LM, LayerKV, LlamaLM, module_for
from banel_jax.models.hf.weights import (load_config, load_params, load_tokenizer,
                                         param_count, weight_files)


def load_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32, *,
                    strict: bool = True) -> tuple[Decoder, dict]:
  """``(decoder, params)`` of the local checkpoint directory ``path``.

  Args:
    path: a directory with ``config.json`` and safetensors weights.
    dtype: parameter and activation dtype (``jnp.float32`` or ``jnp.bfloat16``).
    strict: raise on checkpoint tensors the model does not use.

  Raises:
    HFCheckpointError: the message names what is missing or unsupported.
  """
  config = load_config(path, dtype=dtype)
  return make_decoder(config), load_params(path, config, strict=strict)


__all__ = [
    "SUPPORTED_MODEL_TYPES", "Decoder", "DecoderConfig", "GPT2LM", "HFCheckpointError",
    "LayerKV", "LlamaLM", "PromptCache", "PromptedModel", "config_from_hf",
    "load_config", "load_params", "load_pretrained", "load_tokenizer", "make_decoder",
    "make_prompted_model", "module_for", "param_count", "weight_files",
]
