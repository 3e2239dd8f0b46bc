"""Pretrained decoders from local Hugging Face checkpoints (banel_jax.models.hf).

Tiny random Llama, Qwen2 and GPT-2 models are built with ``transformers``, their
parameters set to random values (biases and norms included), and saved with
``save_pretrained``; the Flax models read from those directories must give
PyTorch's logits and log-probabilities to 1e-4 in float32. Tests that need
``torch``/``transformers`` skip where they are not installed.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import banel_jax as bj
from banel_jax.models import hf

TOL = dict(atol=1e-4, rtol=1e-4)
VOCAB = 61
PROMPT = (3, 17, 42, 8, 25)
END_IDS = tuple(range(0, VOCAB, 4))  # many end ids: sampled completions end early
PAD_ID = 1


def _torch_and_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("safetensors")
  return torch, transformers


def _hf_configs(transformers):
  """Tiny configs: Llama (untied, MHA), Llama with biases, tied embeddings, GQA
  and llama3 rotary scaling, Qwen2 (q/k/v biases, GQA, tied), GPT-2 (tied), and
  GPT-2 untied with exact GELU and scores scaled by the inverse layer index."""
  common = dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2,
                max_position_embeddings=64, attn_implementation="eager",
                bos_token_id=2, eos_token_id=5, pad_token_id=PAD_ID)
  return {
      "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
          hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
          rope_theta=500.0, tie_word_embeddings=False, **common)),
      "llama3": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
          hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
          attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
          rope_theta=10000.0,
          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 16}, **common)),
      "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
          hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
          rope_theta=1000.0, tie_word_embeddings=True, **common)),
      "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
          vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
          attn_implementation="eager", bos_token_id=2, eos_token_id=5)),
      "gpt2_untied": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
          vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32,
          activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
          tie_word_embeddings=False, attn_implementation="eager", bos_token_id=2,
          eos_token_id=5)),
  }


def _save(model, path, transformers, **kwargs):
  if int(transformers.__version__.split(".")[0]) < 5:
    kwargs.setdefault("safe_serialization", True)
  model.save_pretrained(path, **kwargs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """``{name: (directory, torch model)}``; Qwen2 is saved in shards."""
  torch, transformers = _torch_and_transformers()
  torch.manual_seed(0)
  out = {}
  for name, (cls, config) in _hf_configs(transformers).items():
    model = cls(config).eval()
    with torch.no_grad():
      for pname, p in model.named_parameters():
        p.normal_(0.0, 0.15)
        if p.ndim == 1 and ("norm" in pname or ".ln_" in pname) and pname.endswith(
            "weight"):
          p.add_(1.0)
    path = tmp_path_factory.mktemp(name)
    _save(model, path, transformers,
          **({"max_shard_size": "20KB"} if name == "qwen2" else {}))
    out[name] = (path, model)
  return out


@pytest.fixture(scope="module")
def loaded(checkpoints):
  """``{name: (decoder, float32 params, jitted logits)}`` read from the checkpoints."""
  out = {}
  for name, (path, _) in checkpoints.items():
    decoder, params = hf.load_pretrained(path)
    out[name] = (decoder, params, jax.jit(decoder.logits))
  return out


def _torch_logits(model, tokens):
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _seq_log_prob(logits, tokens):
  """Sum of ``log p(tokens[t+1] | tokens[:t+1])`` of logits ``[B, T, V]``."""
  logp = _log_softmax(logits)[:, :-1]
  return np.take_along_axis(logp, np.asarray(tokens)[:, 1:, None], axis=-1)[..., 0].sum(1)


@pytest.mark.parametrize("name", ["llama", "llama3", "qwen2", "gpt2", "gpt2_untied"])
def test_logits_and_sequence_log_probs_match_torch(checkpoints, loaded, name):
  torch_model = checkpoints[name][1]
  decoder, params, logits = loaded[name]
  assert decoder.config.model_type == {"llama3": "llama", "gpt2_untied": "gpt2"}.get(
      name, name)
  assert ("lm_head" in params) == (name in ("llama", "gpt2_untied"))
  assert hf.param_count(params) == sum(p.numel() for p in torch_model.parameters())
  tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 12))
  ours = np.asarray(logits(params, jnp.asarray(tokens)))
  theirs = _torch_logits(torch_model, tokens)
  assert ours.shape == theirs.shape == (3, 12, VOCAB)
  np.testing.assert_allclose(ours, theirs, **TOL)
  np.testing.assert_allclose(_seq_log_prob(ours, tokens), _seq_log_prob(theirs, tokens),
                             **TOL)


def test_config_of_each_family(checkpoints):
  qwen = hf.load_config(checkpoints["qwen2"][0])
  assert (qwen.qkv_bias, qwen.out_bias, qwen.num_heads, qwen.num_kv_heads,
          qwen.tie_word_embeddings, qwen.rope_theta) == (True, False, 4, 2, True, 1000.0)
  llama3 = hf.load_config(checkpoints["llama3"][0])
  assert (llama3.qkv_bias, llama3.out_bias, llama3.mlp_bias) == (True, True, True)
  assert dict(llama3.rope_scaling)["rope_type"] == "llama3"
  gpt2 = hf.load_config(checkpoints["gpt2"][0])
  assert (gpt2.family, gpt2.activation, gpt2.intermediate_size) == ("gpt2", "gelu_new",
                                                                    128)
  assert gpt2.eos_token_ids == (5,)
  assert len(hf.weight_files(checkpoints["qwen2"][0])) > 1  # really sharded


def _completions():
  """Completions of length 6: an end at 2 then pads, no end, an end last, an end
  first, and an end followed by a non-pad token (impossible)."""
  e = END_IDS[3]
  return np.array([[7, 9, e, PAD_ID, PAD_ID, PAD_ID],
                   [7, 9, 10, 11, 13, 14],
                   [30, 31, 33, 34, 35, e],
                   [e, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                   [7, e, PAD_ID, 9, PAD_ID, PAD_ID]], np.int32)


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])
def test_prompted_log_prob_matches_torch(checkpoints, loaded, name):
  torch_model = checkpoints[name][1]
  decoder, params, _ = loaded[name]
  gen = hf.make_prompted_model(decoder, PROMPT, 6, end_ids=END_IDS, pad_id=PAD_ID,
                               logit_chunk=2)
  x = _completions()
  full = np.concatenate([np.broadcast_to(PROMPT, (len(x), len(PROMPT))), x], axis=1)
  logp = _log_softmax(_torch_logits(torch_model, full))
  per_tok = np.take_along_axis(logp[:, len(PROMPT) - 1:-1], x[..., None],
                               axis=-1)[..., 0]
  end_at = [2, 5, 5, 0]  # through the first end token; nothing after counts
  expected = [per_tok[i, :end + 1].sum() for i, end in enumerate(end_at)]
  unchunked = hf.make_prompted_model(decoder, PROMPT, 6, end_ids=END_IDS,
                                     pad_id=PAD_ID, logit_chunk=None)

  @jax.jit
  def scores(params, x):
    prepared = gen.model.log_prob.prepare(params, x)
    return (gen.model.log_prob(params, x), gen.token_log_prob(params, x),
            gen.model.log_prob.apply(params, prepared, x),
            unchunked.model.log_prob(params, x))

  ours, tok, split, one_pass = map(np.asarray, scores(params, jnp.asarray(x)))
  np.testing.assert_allclose(ours[:4], expected, **TOL)
  assert ours[4] == -np.inf
  assert np.all(tok[0, 3:] == 0.0) and np.all(tok[3, 1:] == 0.0)
  # The split form (the prompt's prefill once) and unchunked scoring agree.
  np.testing.assert_allclose(split, ours, **TOL)
  np.testing.assert_allclose(one_pass, ours, **TOL)


@pytest.mark.parametrize("name", ["llama3", "gpt2"])
def test_cached_sampler_steps_equal_full_forward(loaded, name):
  decoder, params, _ = loaded[name]
  c, temperature = 7, {"llama3": 1.0, "gpt2": 0.7}[name]
  gen = hf.make_prompted_model(decoder, PROMPT, c, end_ids=END_IDS, pad_id=PAD_ID,
                               temperature=temperature)
  prompt = jnp.broadcast_to(jnp.asarray(PROMPT, jnp.int32), (16, len(PROMPT)))

  @jax.jit
  def run(params, key):
    x, step_logits = gen.sample_with_logits(params, key, 16)
    full = decoder.logits(params, jnp.concatenate([prompt, x], axis=1))
    return x, step_logits, full, gen.model.log_prob(params, x)

  x, step_logits, full, logp = map(np.asarray, run(params, jax.random.key(3)))
  assert x.shape == (16, c) and x.dtype == np.int32
  assert step_logits.shape == (16, c, VOCAB)
  np.testing.assert_allclose(step_logits, full[:, len(PROMPT) - 1:-1] / temperature,
                             **TOL)
  # Pads after the first end token; some rows end early, some run to the end.
  is_end = np.isin(x, END_IDS)
  after = (np.cumsum(is_end, axis=1) - is_end) > 0
  assert np.all(x[after] == PAD_ID) and after.any() and not after.all()
  tok = np.take_along_axis(_log_softmax(step_logits), x[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(logp, np.where(after, 0.0, tok).sum(axis=1), **TOL)


def test_prompted_model_gradients(loaded):
  """Gradients of the NLL reach every parameter, through the prompt's prefill."""
  decoder, params, _ = loaded["gpt2_untied"]
  gen = hf.make_prompted_model(decoder, PROMPT, 6, end_ids=END_IDS, pad_id=PAD_ID)
  assert isinstance(gen.model, bj.GenerativeModel)
  assert isinstance(gen.model.log_prob, bj.SplitLogProb)
  x = jnp.asarray(_completions()[:4])
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: -jnp.mean(gen.model.log_prob(p, x))))(params)
  assert np.isfinite(loss)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def test_bfloat16_load(checkpoints, loaded):
  decoder, params = hf.load_pretrained(checkpoints["qwen2"][0], dtype=jnp.bfloat16)
  assert decoder.config.dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  _, params32, logits32 = loaded["qwen2"]
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (2, 8)))
  low = np.asarray(jax.jit(decoder.logits)(params, tokens))
  assert low.dtype == np.float32
  high = np.asarray(logits32(params32, tokens))
  assert np.abs(low - high).max() < 0.1 * np.abs(high).max()


# -- errors ---------------------------------------------------------------------------


def test_missing_directory_config_and_weights(tmp_path):
  with pytest.raises(hf.HFCheckpointError, match="does not exist"):
    hf.load_pretrained(tmp_path / "nowhere")
  with pytest.raises(hf.HFCheckpointError, match="no config.json"):
    hf.load_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "vocab_size": 11, "n_embd": 8, "n_layer": 1, "n_head": 2}))
  with pytest.raises(hf.HFCheckpointError, match="no weights in checkpoint"):
    hf.load_pretrained(tmp_path)


def test_unsupported_configs(tmp_path):
  base = {"vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 16}
  cases = [({"model_type": "bert"}, "unsupported model_type 'bert'"),
           ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
            "unsupported rope_type 'yarn'"),
           ({"model_type": "qwen2", "use_sliding_window": True}, "sliding-window"),
           ({"model_type": "llama", "hidden_size": None}, "hidden_size"),
           ({"model_type": "llama", "hidden_act": "mish"}, "activation 'mish'")]
  for extra, message in cases:
    (tmp_path / "config.json").write_text(json.dumps({**base, **extra}))
    with pytest.raises(hf.HFCheckpointError, match=message):
      hf.load_config(tmp_path)


def test_config_layouts_and_generation_config(tmp_path):
  """transformers 4 layout (top-level rope_theta, rope_scaling with ``type``) and
  end ids from generation_config.json."""
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "llama", "vocab_size": 11, "hidden_size": 8,
       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
       "rope_theta": 100.0, "rope_scaling": {"type": "linear", "factor": 4.0},
       "eos_token_id": 3}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 3]}))
  cfg = hf.load_config(tmp_path)
  assert cfg.rope_theta == 100.0 and cfg.eos_token_ids == (3, 7)
  plain = cfg.replace(rope_scaling=())
  np.testing.assert_allclose(cfg.inv_freq(), plain.inv_freq() / 4.0, rtol=1e-6)
  np.testing.assert_allclose(plain.inv_freq(), 100.0 ** -(np.arange(0, 4, 2) / 4),
                             rtol=1e-6)


def _copy_without(src: pathlib.Path, dst: pathlib.Path, drop=(), add=None):
  from safetensors.numpy import load_file, save_file
  dst.mkdir()
  shutil.copy(src / "config.json", dst / "config.json")
  tensors = {k: v for k, v in load_file(src / "model.safetensors").items()
             if k not in drop}
  save_file({**tensors, **(add or {})}, dst / "model.safetensors")


def test_missing_unused_and_misshapen_tensors(checkpoints, tmp_path):
  src = checkpoints["llama"][0]
  missing = "model.layers.1.mlp.down_proj.weight"
  _copy_without(src, tmp_path / "missing", drop=(missing, "lm_head.weight"))
  with pytest.raises(hf.HFCheckpointError,
                     match=f"lacks 2 tensor.*{missing}.*lm_head.weight"):
    hf.load_pretrained(tmp_path / "missing")
  extra = "model.layers.0.self_attn.q_norm.weight"
  _copy_without(src, tmp_path / "extra", add={extra: np.ones(8, np.float32)})
  with pytest.raises(hf.HFCheckpointError, match=f"does not use.*{extra}"):
    hf.load_pretrained(tmp_path / "extra")
  hf.load_pretrained(tmp_path / "extra", strict=False)
  config = json.loads((src / "config.json").read_text())
  (tmp_path / "extra" / "config.json").write_text(json.dumps({**config,
                                                              "vocab_size": 64}))
  with pytest.raises(hf.HFCheckpointError, match="model.embed_tokens.weight.*shape"):
    hf.load_pretrained(tmp_path / "extra", strict=False)


def test_original_gpt2_layout(checkpoints, tmp_path):
  """Names without the ``transformer.`` prefix, causal-mask buffers, a weights
  file under another name: the same params."""
  from safetensors.numpy import load_file, save_file
  src = checkpoints["gpt2"][0]
  dst = tmp_path / "gpt2_hub"
  dst.mkdir()
  shutil.copy(src / "config.json", dst / "config.json")
  tensors = {k.removeprefix("transformer."): v
             for k, v in load_file(src / "model.safetensors").items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
  tensors["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
  save_file(tensors, dst / "gpt2_weights.safetensors")
  jax.tree.map(np.testing.assert_array_equal, hf.load_pretrained(dst)[1],
               hf.load_pretrained(src)[1])


def test_index_naming_a_missing_shard(checkpoints, tmp_path):
  dst = tmp_path / "sharded"
  shutil.copytree(checkpoints["qwen2"][0], dst)
  index = json.loads((dst / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[-1]
  (dst / shard).unlink()
  with pytest.raises(hf.HFCheckpointError, match=f"missing.*{shard}"):
    hf.load_pretrained(dst)


def test_bad_prompted_arguments():
  cfg = hf.config_from_hf({"model_type": "gpt2", "vocab_size": 11, "n_embd": 8,
                           "n_layer": 1, "n_head": 2, "n_positions": 8})
  with pytest.raises(ValueError, match="non-empty"):
    hf.make_prompted_model(cfg, [], 3, end_ids=[1])
  with pytest.raises(ValueError, match="learned positions"):
    hf.make_prompted_model(cfg, [1, 2, 3], 6, end_ids=[1])
  with pytest.raises(ValueError, match="outside"):
    hf.make_prompted_model(cfg, [1, 20], 3, end_ids=[1])
  with pytest.raises(ValueError, match="temperature"):
    hf.make_prompted_model(cfg, [1], 3, temperature=0.0)
  plain = hf.make_prompted_model(cfg, [1], 3)  # no end ids: always 3 tokens
  assert plain.end_ids == () and plain.model.event_shape == (3,)


# -- tokenizer ------------------------------------------------------------------------


def test_load_tokenizer(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"[UNK]": 0, "<eos>": 1, "2": 2, "+": 3, "=": 4, "4": 5}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  for where in (tmp_path, tmp_path / "tokenizer.json"):
    loaded = hf.load_tokenizer(where)
    assert loaded.encode("2 + 2 = 4 5").ids == [2, 3, 2, 4, 5, 0]
    assert loaded.token_to_id("<eos>") == 1
    assert loaded.decode([2, 3, 2]) == "2 + 2"
  with pytest.raises(hf.HFCheckpointError, match="no tokenizer.json in directory"):
    hf.load_tokenizer(tmp_path / "..")
  with pytest.raises(hf.HFCheckpointError, match="no tokenizer.json at"):
    hf.load_tokenizer(tmp_path / "missing.json")
