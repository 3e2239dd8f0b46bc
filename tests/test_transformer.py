"""Tests of banel_jax.models.transformer (tiny configs, CPU friendly)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from banel_jax.models import transformer as tfm

# vocab 6: content {0, 1, 2}, BOS 3, EOS 4, PAD 5.
TINY = tfm.TransformerConfig(vocab_size=6, max_len=4, num_layers=1, width=16,
                             num_heads=2, mlp_ratio=2, bos_id=3, eos_id=4, pad_id=5)
# vocab 5: content {0, 1}, BOS 2, EOS 3, PAD 4; 1 + 2 + 4 + 8 = 15 valid sequences.
ENUM = tfm.TransformerConfig(vocab_size=5, max_len=3, num_layers=1, width=16,
                             num_heads=2, mlp_ratio=2, bos_id=2, eos_id=3, pad_id=4)


@pytest.fixture(scope="module")
def tiny():
  tr = tfm.make_transformer(TINY)
  return tr, jax.jit(tr.model.init)(jax.random.key(0))


def _all_valid_sequences(cfg):
  content = [i for i in range(cfg.vocab_size)
             if i not in (cfg.bos_id, cfg.eos_id, cfg.pad_id)]
  seqs = []
  for k in range(cfg.max_len):  # EOS at position k
    for body in itertools.product(content, repeat=k):
      seqs.append(list(body) + [cfg.eos_id] + [cfg.pad_id] * (cfg.max_len - k - 1))
  seqs += [list(b) for b in itertools.product(content, repeat=cfg.max_len)]
  return np.array(seqs, np.int32)


def test_config_is_hashable_and_validated():
  assert hash(TINY) == hash(TINY.replace())
  assert tfm.TransformerConfig().head_dim == 32
  with pytest.raises(ValueError):
    tfm.TransformerConfig(bos_id=3, eos_id=3)
  with pytest.raises(ValueError):
    tfm.TransformerConfig(width=10, num_heads=4)
  with pytest.raises(ValueError):
    tfm.TransformerConfig(vocab_size=6)  # default ids 12..14 out of range


def test_model_contract(tiny):
  tr, params = tiny
  assert tr.model.event_shape == (TINY.max_len,)
  assert tr.model.dtype == jnp.int32
  x = tr.model.sample(params, jax.random.key(1), 5)
  assert x.shape == (5, TINY.max_len) and x.dtype == jnp.int32
  assert tr.model.log_prob(params, x).shape == (5,)
  with pytest.raises(AssertionError):
    tr.model.log_prob(params, x[:, :2])  # wrong length
  with pytest.raises(AssertionError):
    tr.model.log_prob(params, x.astype(jnp.float32))


def test_kv_cache_matches_full_recomputation(tiny):
  tr, params = tiny
  x = jax.random.randint(jax.random.key(2), (3, TINY.max_len), 0, 3)
  full_rows = jax.jit(tr.logits)(params, x)  # [B, L, V]
  decode_step = jax.jit(tr.decode_step)  # one compile: pos is traced
  full_fn = jax.jit(tr.next_token_logits_full)
  cached_fn = jax.jit(tr.next_token_logits_cached)
  cache = tr.init_cache(3)
  tokens = jnp.concatenate([jnp.full((3, 1), TINY.bos_id), x], axis=1)
  for t in range(TINY.max_len + 1):
    step_logits, cache = decode_step(params, cache, tokens[:, t], t)
    full = full_fn(params, x[:, :t])
    np.testing.assert_allclose(step_logits, full, atol=1e-5, rtol=0)
    if t in (0, TINY.max_len):  # the scan-based wrapper (one compile per length)
      cached = cached_fn(params, x[:, :t])
      np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    if t < TINY.max_len:
      np.testing.assert_allclose(full_rows[:, t], full, atol=1e-5, rtol=0)
    # BOS and PAD are never allowed as next tokens.
    assert np.all(np.isneginf(full[:, [TINY.bos_id, TINY.pad_id]]))


def test_samples_are_valid_and_finite(tiny):
  tr, params = tiny
  x = np.asarray(jax.jit(tr.model.sample, static_argnums=2)(
      params, jax.random.key(3), 256))
  lp = np.asarray(tr.model.log_prob(params, jnp.asarray(x)))
  assert np.all(np.isfinite(lp)) and np.all(lp <= 0)
  saw_eos = saw_no_eos = False
  for row in x:
    eos = np.flatnonzero(row == TINY.eos_id)
    end = eos[0] if eos.size else TINY.max_len
    saw_eos |= bool(eos.size)
    saw_no_eos |= not eos.size
    assert not np.isin(row[:end], [TINY.bos_id, TINY.pad_id]).any(), row
    assert np.all(row[end + 1:] == TINY.pad_id), row
  assert saw_eos and saw_no_eos


def test_invalid_sequences_have_zero_probability(tiny):
  tr, params = tiny
  eos, pad, bos = TINY.eos_id, TINY.pad_id, TINY.bos_id
  bad = jnp.array([[0, eos, 1, pad],    # non-PAD after EOS
                   [0, pad, eos, pad],  # PAD before EOS
                   [bos, 0, 1, 2],      # BOS
                   [0, 9, 1, 2],        # out of range
                   [0, -1, 1, 2]], jnp.int32)
  assert np.all(np.isneginf(tr.model.log_prob(params, bad)))


def test_enumeration_sums_to_one_and_matches_samples():
  tr = tfm.make_transformer(ENUM)
  params = jax.jit(tr.model.init)(jax.random.key(4))
  seqs = _all_valid_sequences(ENUM)
  assert len(seqs) == 15
  probs = np.exp(np.asarray(tr.model.log_prob(params, jnp.asarray(seqs)), np.float64))
  assert abs(probs.sum() - 1.0) < 1e-5

  n = 20_000
  x = np.asarray(jax.jit(tr.model.sample, static_argnums=2)(
      params, jax.random.key(5), n))
  index = {tuple(s): i for i, s in enumerate(seqs.tolist())}
  counts = np.zeros(len(seqs))
  for row in x.tolist():
    counts[index[tuple(row)]] += 1  # KeyError would mean an invalid sample
  expected = n * probs / probs.sum()
  assert expected.min() >= 5, expected  # chi-square validity at this seed
  _, p_value = stats.chisquare(counts, expected)
  assert p_value > 1e-3, (p_value, counts, expected)


def test_sample_does_not_retrace(tiny):
  tr, params = tiny
  traces = []

  def sample(params, key):
    traces.append(1)
    return tr.model.sample(params, key, 8)

  fn = jax.jit(sample)
  a = fn(params, jax.random.key(6))
  b = fn(params, jax.random.key(7))
  jax.block_until_ready((a, b))
  assert len(traces) == 1
  assert not np.array_equal(a, b)


def test_greedy_decode_matches_full_recomputation_argmax(tiny):
  tr, params = tiny
  prefix = jnp.array([[0, 1], [2, 2], [1, TINY.eos_id]], jnp.int32)
  num_steps = 2
  got = np.asarray(jax.jit(tr.greedy_decode, static_argnums=2)(
      params, prefix, num_steps))
  assert got.shape == (3, num_steps)
  seq = prefix
  done = np.any(np.asarray(prefix) == TINY.eos_id, axis=1)
  for _ in range(num_steps):
    nxt = np.asarray(jnp.argmax(tr.next_token_logits_full(params, seq), axis=-1))
    nxt = np.where(done, TINY.pad_id, nxt)
    done |= nxt == TINY.eos_id
    seq = jnp.concatenate([seq, jnp.asarray(nxt, jnp.int32)[:, None]], axis=1)
  np.testing.assert_array_equal(got, np.asarray(seq[:, prefix.shape[1]:]))
  np.testing.assert_array_equal(got[2], [TINY.pad_id] * num_steps)
  # From BOS only (P == 0).
  empty = jnp.zeros((2, 0), jnp.int32)
  first = tr.greedy_decode(params, empty, 1)
  expected = jnp.argmax(tr.next_token_logits_full(params, empty), axis=-1)
  np.testing.assert_array_equal(first[:, 0], expected)
  with pytest.raises(ValueError):
    tr.greedy_decode(params, prefix, TINY.max_len)


def test_training_lowers_nll(tiny):
  tr, params = tiny
  eos, pad = TINY.eos_id, TINY.pad_id
  data = jnp.array([[0, 1, eos, pad], [1, 1, 2, eos], [2, eos, pad, pad],
                    [0, 0, 0, 0]], jnp.int32)
  tx = optax.adam(1e-2)

  def loss_fn(p):
    return -jnp.mean(tr.model.log_prob(p, data))

  @jax.jit
  def train(p):
    def step(carry, _):
      p, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss
    (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), None, length=30)
    return p, losses

  new_params, losses = train(params)
  assert np.all(np.isfinite(losses))
  before, after = float(loss_fn(params)), float(loss_fn(new_params))
  assert after < 0.5 * before, (before, after)


def test_chunked_scoring_matches_one_pass():
  """log_prob in chunks (padded batch, -inf rows, gradients, vmap) equals one pass."""
  one = tfm.make_transformer(TINY, score_chunk=None)
  chunked = tfm.make_transformer(TINY, score_chunk=4)
  params = jax.jit(one.model.init)(jax.random.key(7))
  x = jax.jit(one.model.sample, static_argnums=2)(params, jax.random.key(8), 10)
  x = x.at[3].set(jnp.array([0, TINY.pad_id, 1, 2]))  # impossible: -inf
  want = one.model.log_prob(params, x)
  got = jax.jit(chunked.model.log_prob)(params, x)
  assert np.isneginf(got[3]) and np.isneginf(want[3])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(chunked.token_log_prob(params, x),
                             one.token_log_prob(params, x), rtol=1e-5)

  ok = jnp.delete(x, 3, axis=0)  # 9 rows: 2 full chunks and a padded one
  loss = lambda tr: jax.grad(lambda p: -jnp.mean(tr.model.log_prob(p, ok)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.jit(lambda: loss(chunked))(), loss(one))

  xs = jnp.stack([ok, ok[::-1]])  # seeds side by side
  np.testing.assert_allclose(
      jax.vmap(chunked.model.log_prob, in_axes=(None, 0))(params, xs),
      jax.vmap(one.model.log_prob, in_axes=(None, 0))(params, xs), rtol=1e-5)


def test_score_chunk_setting():
  on_cpu = jax.default_backend() == "cpu"
  assert tfm.resolve_score_chunk("auto", 10_000) == (tfm.CPU_SCORE_CHUNK if on_cpu
                                                     else None)
  assert tfm.resolve_score_chunk("auto", tfm.CPU_SCORE_CHUNK) is None
  assert tfm.resolve_score_chunk(None, 10_000) is None
  assert tfm.resolve_score_chunk(8, 9) == 8
  assert tfm.resolve_score_chunk(8, 8) is None
  for bad in (0, -1, 2.5, True, "fast"):
    with pytest.raises(ValueError, match="score_chunk"):
      tfm.make_transformer(TINY, score_chunk=bad)


def test_segmented_decoding_matches_one_full_cache(monkeypatch):
  """Sampling and greedy decoding against caches that grow per segment give the
  tokens of a single full-length cache."""
  cfg = TINY.replace(max_len=7)
  tr = tfm.make_transformer(cfg)
  params = jax.jit(tr.model.init)(jax.random.key(9))
  assert len(tfm.decode_segment_ends(cfg.max_len)) == 4

  def run():
    x = tr.model.sample(params, jax.random.key(10), 64)
    return x, tr.greedy_decode(params, x[:, :2], 5)
  segmented = run()
  monkeypatch.setattr(tfm, "decode_segment_ends", lambda n: (n,))
  full = run()
  np.testing.assert_array_equal(segmented[0], full[0])
  np.testing.assert_array_equal(segmented[1], full[1])
  assert len(set(map(tuple, np.asarray(full[0]).tolist()))) > 10  # varied samples


def test_input_tables_give_the_same_results():
  """Every entry point with the first block's inputs looked up equals computing them."""
  plain = tfm.make_transformer(TINY, input_tables=False)
  table = tfm.make_transformer(TINY, input_tables=True)
  params = jax.jit(plain.model.init)(jax.random.key(11))
  x = plain.model.sample(params, jax.random.key(12), 9)
  np.testing.assert_array_equal(jax.jit(table.model.sample, static_argnums=2)(
      params, jax.random.key(12), 9), x)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  close(table.logits(params, x), plain.logits(params, x))
  close(table.model.log_prob(params, x), plain.model.log_prob(params, x))
  close(table.next_token_logits_cached(params, x[:, :2]),
        plain.next_token_logits_full(params, x[:, :2]))
  close(table.next_token_logits_full(params, x[:, :3]),
        plain.next_token_logits_full(params, x[:, :3]))
  cache = plain.init_cache(9)
  tok = jnp.full((9,), TINY.bos_id, jnp.int32)
  close(table.decode_step(params, cache, tok, 0)[0],
        plain.decode_step(params, cache, tok, 0)[0])
  np.testing.assert_array_equal(table.greedy_decode(params, x[:, :1], 3),
                                plain.greedy_decode(params, x[:, :1], 3))
  lengths = jnp.arange(9, dtype=jnp.int32) % 3
  np.testing.assert_array_equal(
      table.greedy_decode_ragged(params, x[:, :2], lengths, 2),
      plain.greedy_decode_ragged(params, x[:, :2], lengths, 2))
  # Gradients flow through the tables to the embedding and the first block.
  loss = lambda tr: jax.grad(lambda p: -jnp.mean(tr.model.log_prob(p, x)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               loss(table), loss(plain))
  # An id outside the vocabulary gives NaN logits on both paths (not another row).
  bad = x.at[0, 1].set(TINY.vocab_size + 1)
  got, want = table.logits(params, bad), plain.logits(params, bad)
  assert np.isnan(got[0, 2]).any()
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_array_equal(table.model.log_prob(params, bad),
                                plain.model.log_prob(params, bad))


def test_decode_step_takes_precomputed_tables():
  """A decode loop may compute the tables once and pass them to every step:
  the same logits and cache as computing them (or not using them); tables of
  another shape are refused."""
  plain = tfm.make_transformer(TINY, input_tables=False)
  params = jax.jit(plain.model.init)(jax.random.key(13))
  x = plain.model.sample(params, jax.random.key(14), 5)
  tables = plain.compute_input_tables(params)
  rows = TINY.num_positions * TINY.vocab_size
  assert tables.residual.shape == (rows, TINY.width)
  cache_a = cache_b = plain.init_cache(5)
  tok = jnp.full((5,), TINY.bos_id, jnp.int32)
  for t in range(3):
    got, cache_a = plain.decode_step(params, cache_a, tok, t, tables)
    want, cache_b = plain.decode_step(params, cache_b, tok, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache_a[0].k, cache_b[0].k, rtol=1e-5, atol=1e-6)
    tok = x[:, t]
  short = tfm.InputTables(tables.residual[:-1], tables.qkv[:-1])
  with pytest.raises(AssertionError, match="compute_input_tables"):
    plain.decode_step(params, cache_a, tok, 3, short)


def test_input_tables_setting():
  rows = TINY.num_positions * TINY.vocab_size  # 30
  assert tfm.resolve_input_tables("auto", TINY, rows)
  assert not tfm.resolve_input_tables("auto", TINY, rows - 1)
  assert tfm.resolve_input_tables(True, TINY, 1)
  assert not tfm.resolve_input_tables(False, TINY, 10**6)
  for bad in (0, 1, None, "yes"):
    with pytest.raises(ValueError, match="input_tables"):
      tfm.make_transformer(TINY, input_tables=bad)
