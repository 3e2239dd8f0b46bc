"""Tests of banel_jax.tasks.addition, greedy_decode_ragged and banel_jax.runtime.checkpoint."""

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from banel_jax.runtime import checkpoint
from banel_jax.models import transformer as tfm
from banel_jax.tasks import addition as add

# Operands of at most 2 digits: queries of <= 6 tokens, answers of <= 4.
TINY_TARGET = tfm.TransformerConfig(max_len=10, num_layers=1, width=16, num_heads=2,
                                    mlp_ratio=2)
TINY = add.AdditionTaskConfig(max_operand_len=2, max_len=8, target=TINY_TARGET)


# ----------------------------------------------------------------------------
# Tokenizer.


def test_encode_decode_round_trip():
  for text in ["0+0=", "12345678+87654321=", "1+2=3", "+=", ""]:
    assert add.decode(add.encode(text)) == text
  assert add.encode("12+3=") == [1, 2, 10, 3, 11]
  assert add.decode([1, 10, 2, 11, add.EOS_ID, 5]) == "1+2="
  assert add.decode([1, add.EOS_ID, 2], stop_at_eos=False) == "1<eos>2"
  assert add.decode([15, add.BOS_ID, add.PAD_ID, 99]) == "<?15><bos><pad><?99>"
  with pytest.raises(ValueError, match="'x'"):
    add.encode("1x2=")


def test_batch_round_trip():
  texts = ["12+3=", "0+0=", "99999999+1="]
  x = add.encode_batch(texts, max_len=24)
  assert x.shape == (3, 24) and x.dtype == np.int32
  np.testing.assert_array_equal(x[0, :8], [1, 2, 10, 3, 11, add.EOS_ID, add.PAD_ID,
                                          add.PAD_ID])
  assert add.decode_batch(x) == texts
  with pytest.raises(ValueError, match="max_len"):
    add.encode_batch(["123+4="], max_len=6)  # 7 tokens with EOS


# ----------------------------------------------------------------------------
# Grammar.

# text, well-formed with leading zeros allowed, ... disallowed (max_operand_len 8)
GRAMMAR_CASES = [
    ("1+2=", True, True),
    ("0+0=", True, True),
    ("10+0=", True, True),
    ("12345678+87654321=", True, True),
    ("00+1=", True, False),
    ("1+01=", True, False),
    ("04967+660843=", True, False),
    ("123456789+1=", False, False),  # operand too long
    ("1+123456789=", False, False),
    ("+1=", False, False),
    ("1+=", False, False),
    ("1+2", False, False),  # no '='
    ("1+2=3", False, False),  # '=' not last
    ("1++2=", False, False),
    ("1+2==", False, False),
    ("=1+2", False, False),
    ("12=", False, False),
    ("", False, False),
]


@pytest.mark.parametrize("text,ok_zeros,ok_no_zeros", GRAMMAR_CASES)
def test_grammar(text, ok_zeros, ok_no_zeros):
  x = add.encode_batch([text], max_len=24)
  assert add.is_well_formed(x, 8, allow_leading_zeros=True)[0] == ok_zeros
  assert add.is_well_formed(x, 8, allow_leading_zeros=False)[0] == ok_no_zeros


def test_grammar_vectorised_values_and_odd_tokens():
  texts = [t for t, _, _ in GRAMMAR_CASES]
  x = add.encode_batch(texts, max_len=24)
  parsed = add.parse_queries(x, 8, allow_leading_zeros=False)
  np.testing.assert_array_equal(parsed.syntax_ok, [c[1] for c in GRAMMAR_CASES])
  np.testing.assert_array_equal(parsed.well_formed, [c[2] for c in GRAMMAR_CASES])
  i = texts.index("04967+660843=")
  assert (parsed.a[i], parsed.b[i], parsed.length[i]) == (4967, 660843, 13)
  assert parsed.leading_zero[i]
  i = texts.index("12345678+87654321=")
  assert (parsed.a[i], parsed.b[i]) == (12345678, 87654321)
  assert np.all(parsed.a[~parsed.syntax_ok] == 0)

  good = add.encode_batch(["1+2="], max_len=8)[0]
  rows = np.stack([good] * 6)
  rows[1, 1] = add.BOS_ID  # BOS inside the query
  rows[2, 1] = add.BLANK_ID  # unused id
  rows[3, 2] = add.PAD_ID
  rows[4] = [1, 10, 2, 11, 1, 10, 2, 11]  # no EOS
  rows[5, 5:] = [7, 10, 11]  # junk after EOS is not looked at
  np.testing.assert_array_equal(add.is_well_formed(rows, 2),
                                [True, False, False, False, False, True])
  with pytest.raises(ValueError):
    add.parse_queries(good)  # not 2-D


def test_sample_queries_follow_the_pretraining_distribution():
  cfg = add.AdditionTaskConfig()
  x = jax.jit(add.sample_queries, static_argnums=(1, 2))(jax.random.key(0), 4000, cfg)
  assert x.shape == (4000, 24) and x.dtype == jnp.int32
  parsed = add.parse_queries(np.asarray(x), allow_leading_zeros=False)
  assert parsed.well_formed.all()
  len_a = np.array([t.index("+") for t in add.decode_batch(x)])
  assert set(len_a.tolist()) == set(range(1, 9))
  assert abs(np.mean(len_a) - 4.5) < 0.15
  assert parsed.a.max() > 10**7 and np.any(parsed.a == 0)


def test_target_sequences_hold_aligned_query_and_reversed_sum():
  cfg = add.AdditionTaskConfig()
  tokens, weights = jax.jit(add.sample_target_sequences, static_argnums=(1, 2))(
      jax.random.key(1), 64, cfg)
  tokens, weights = np.asarray(tokens), np.asarray(weights)
  assert tokens.shape == weights.shape == (64, cfg.target.max_len)
  q = cfg.query_len
  for row, w in zip(tokens, weights):
    a, b = (add.decode(f).replace("<?15>", "") for f in (row[:8], row[9:17]))
    assert row[8] == add.PLUS_ID and row[17] == add.EQUALS_ID
    answer = add.decode(row[q:])
    assert answer == str(int(a) + int(b))[::-1]
    np.testing.assert_array_equal(np.flatnonzero(w), np.arange(q, q + len(answer) + 1))


def test_raw_target_sequences_hold_the_query_as_written_then_the_reversed_sum():
  cfg = add.AdditionTaskConfig(target_format="raw")
  tokens, weights = jax.jit(add.sample_target_sequences, static_argnums=(1, 2))(
      jax.random.key(1), 64, cfg)
  tokens, weights = np.asarray(tokens), np.asarray(weights)
  assert tokens.shape == weights.shape == (64, cfg.target.max_len)
  starts = set()
  for row, w in zip(tokens, weights):
    text = add.decode(row)  # up to the answer's EOS
    query, answer = text.split("=")
    a, b = query.split("+")
    assert a[0] != "0" or len(a) == 1
    assert answer == str(int(a) + int(b))[::-1]
    start = len(query) + 1
    starts.add(start)
    np.testing.assert_array_equal(np.flatnonzero(w),
                                  np.arange(start, start + len(answer) + 1))
  assert len(starts) > 5  # the answer starts wherever the query ends


def test_msb_target_sequences_hold_the_sum_as_written():
  cfg = add.AdditionTaskConfig(answer_order="msb")
  tokens, weights = jax.jit(add.sample_target_sequences, static_argnums=(1, 2))(
      jax.random.key(1), 64, cfg)
  tokens, weights = np.asarray(tokens), np.asarray(weights)
  q = cfg.query_len
  for row, w in zip(tokens, weights):
    a, b = (add.decode(f).replace("<?15>", "") for f in (row[:8], row[9:17]))
    answer = add.decode(row[q:])
    # most significant digit first, always m + 1 = 9 digits
    assert answer == str(int(a) + int(b)).zfill(9)
    np.testing.assert_array_equal(np.flatnonzero(w), np.arange(q, q + len(answer) + 1))


def test_reverse_answer_digits_turns_msb_answers_into_what_parse_answers_reads():
  msb = np.array([[1, 6, 8, add.EOS_ID, add.PAD_ID], [0, add.EOS_ID] + [add.PAD_ID] * 3,
                  [add.EOS_ID] + [add.PAD_ID] * 4, [1, 0, 0, 0, add.EOS_ID],
                  [9, 9, 9, 9, 9]])
  lsb = np.asarray(add.reverse_answer_digits(msb))
  valid, value = add.parse_answers(lsb)
  np.testing.assert_array_equal(valid, [True, True, False, True, False])
  np.testing.assert_array_equal(value, [168, 0, 0, 1000, 0])
  np.testing.assert_array_equal(add.reverse_answer_digits(lsb), msb)  # involution


def test_oracle_reads_an_msb_target_through_the_reversal():
  cfg = TINY.replace(answer_order="msb")
  params = jax.jit(add.make_target(cfg).model.init)(jax.random.key(5))
  texts = ["1+2=", "99+99=", "12+3=", "7+75="]
  x = add.encode_batch(texts, max_len=cfg.max_len)
  scores = add.make_scorer(params, cfg, batch_size=4)(x)
  parsed = add.parse_queries(x, cfg.max_operand_len)
  len_a = np.array([t.index("+") for t in texts], np.int32)
  prefix = add.target_prefix(jnp.asarray(x), len_a, parsed.length - len_a - 2,
                             cfg.max_operand_len)
  direct = np.asarray(add.make_target(cfg).greedy_decode(params, prefix,
                                                          cfg.answer_len))
  for i, row in enumerate(direct):  # the target's own tokens, read as written
    text = add.decode(row)
    expected = int(text) if text.isdigit() and add.EOS_ID in row else -1
    assert scores.answer[i] == expected, (texts[i], text)
  with pytest.raises(ValueError, match="answer_order"):
    TINY.replace(answer_order="reversed")


def test_target_prefix_aligns_operands():
  x = add.encode_batch(["12+3=", "04+56="], max_len=8)
  parsed = add.parse_queries(x, 3)
  len_a = np.array([2, 2])
  prefix = np.asarray(add.target_prefix(x, len_a, parsed.length - len_a - 2, 3))
  blank = add.BLANK_ID
  np.testing.assert_array_equal(prefix, [[blank, 1, 2, 10, blank, blank, 3, 11],
                                         [blank, 0, 4, 10, blank, 5, 6, 11]])


# ----------------------------------------------------------------------------
# Answers and oracle.


def test_parse_answers_and_answer_tokens():
  toks = add.answer_tokens([168, 0, 100], 5)
  np.testing.assert_array_equal(toks, [[8, 6, 1, 13, 14], [0, 13, 14, 14, 14],
                                       [0, 0, 1, 13, 14]])
  valid, value = add.parse_answers(toks)
  np.testing.assert_array_equal(valid, [True, True, True])
  np.testing.assert_array_equal(value, [168, 0, 100])
  odd = np.array([[8, 6, 1, 0, 13],      # 0168 == 168
                  [13, 14, 14, 14, 14],  # empty answer
                  [1, 2, 3, 4, 5],       # no EOS
                  [1, 10, 2, 13, 14],    # '+' inside
                  [1, add.PAD_ID, 13, 14, 14]])
  valid, value = add.parse_answers(odd)
  np.testing.assert_array_equal(valid, [True, False, False, False, False])
  np.testing.assert_array_equal(add.answers_correct(odd, [100] * 5, [68] * 5),
                                [True, False, False, False, False])


def test_scoring_with_a_stub_target():
  """A stub answers correctly, except 7 + x (off by one) and x + 9 (garbage)."""
  cfg = add.AdditionTaskConfig()
  texts = ["1+2=", "7+5=", "3+9=", "00+1=", "07+1=", "1+2", "99999999+1=",
           "0+0="]
  calls = []

  def stub(queries, len_a, len_b):
    calls.append(len(queries))
    parsed = add.parse_queries(queries, 8)
    assert parsed.syntax_ok.all()
    np.testing.assert_array_equal(len_a, [t.index("+") for t in
                                          add.decode_batch(queries)])
    sums = parsed.a + parsed.b + (parsed.a == 7)
    out = add.answer_tokens(sums, cfg.answer_len)
    out[parsed.b == 9] = 5  # no EOS: unparsable
    return out

  scores = add.score_queries(add.encode_batch(texts), stub, cfg)
  assert calls == [7]  # the malformed row is not asked
  np.testing.assert_array_equal(scores.syntax_ok, [1, 1, 1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(scores.leading_zero, [0, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(scores.target_wrong, [0, 1, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(scores.rewards(True), [0, 1, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(scores.rewards(False), [0, 1, 1, 0, 0, 0, 0, 0])
  assert scores.rewards(True).dtype == np.float32
  np.testing.assert_array_equal(scores.truth, [3, 12, 12, 1, 8, -1, 10**8, 0])
  np.testing.assert_array_equal(scores.answer, [3, 13, -1, 1, 9, -1, 10**8, 0])


@pytest.fixture(scope="module")
def tiny_target_params():
  return jax.jit(add.make_target(TINY).model.init)(jax.random.key(0))


def test_oracle_smoke_with_a_real_tiny_target(tiny_target_params, caplog):
  texts = ["1+2=", "99+99=", "0+0=", "01+2=", "1+2", "123+4=", "5+6="]
  x = add.encode_batch(texts, max_len=TINY.max_len)
  oracle = add.make_oracle(tiny_target_params, TINY, batch_size=2)
  r = oracle(x)
  assert r.shape == (7,) and r.dtype == np.float32
  assert set(np.unique(r).tolist()) <= {0.0, 1.0}
  assert r[4] == 0 and r[5] == 0  # malformed
  no_zeros = add.make_oracle(tiny_target_params,
                             TINY.replace(allow_leading_zeros=False), batch_size=2)
  r2 = no_zeros(x)
  assert r2[3] == 0
  np.testing.assert_array_equal(np.delete(r2, 3), np.delete(r, 3))
  scores = add.make_scorer(tiny_target_params, TINY, batch_size=2)(x)
  np.testing.assert_array_equal(scores.rewards(True), r)
  np.testing.assert_array_equal(scores.rewards(False), r2)
  # Answers match a direct greedy decode of the aligned prefix.
  target = add.make_target(TINY)
  parsed = add.parse_queries(x, 2)
  ok = np.flatnonzero(parsed.syntax_ok)
  len_a = np.array([texts[i].index("+") for i in ok])
  prefix = add.target_prefix(x[ok], len_a, parsed.length[ok] - len_a - 2, 2)
  direct = jax.jit(target.greedy_decode, static_argnums=2)(
      tiny_target_params, prefix, TINY.answer_len)
  valid, value = add.parse_answers(np.asarray(direct))
  np.testing.assert_array_equal(scores.answer[ok], np.where(valid, value, -1))
  # A second call with another batch size does not recompile.
  with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
    caplog.clear()
    oracle(x[:3])
  assert not [m for m in caplog.messages if "Compiling" in m], caplog.messages
  with pytest.raises(ValueError, match="int\\[n, 8\\]"):
    oracle(x[:, :5])


def test_oracle_with_a_raw_format_target_decodes_the_query_as_written():
  cfg = TINY.replace(target_format="raw")
  params = jax.jit(add.make_target(cfg).model.init)(jax.random.key(3))
  texts = ["1+2=", "99+99=", "01+2=", "1+02=", "12+3=", "1+2"]
  x = add.encode_batch(texts, max_len=cfg.max_len)
  scores = add.make_scorer(params, cfg, batch_size=4)(x)
  target = add.make_target(cfg)
  for i, text in enumerate(texts[:-1]):  # each row decoded on its own
    prefix = jnp.asarray([add.encode(text)], jnp.int32)
    direct = np.asarray(target.greedy_decode(params, prefix, cfg.answer_len))
    valid, value = add.parse_answers(direct)
    assert scores.answer[i] == (value[0] if valid[0] else -1), text
  assert not scores.syntax_ok[-1]
  with pytest.raises(ValueError, match="target_format"):
    TINY.replace(target_format="unaligned")


def test_target_format_is_recorded():
  assert checkpoint.config_to_dict(TINY)["target_format"] == "aligned"
  raw = TINY.replace(target_format="raw")
  d = checkpoint.config_to_dict(raw)
  assert d["target_format"] == "raw"
  assert add.AdditionTaskConfig.from_dict(d) == raw
  assert add.AdditionTaskConfig.from_dict(checkpoint.config_to_dict(TINY)) == TINY
  assert d["answer_order"] == "lsb"
  msb = TINY.replace(answer_order="msb")
  assert add.AdditionTaskConfig.from_dict(checkpoint.config_to_dict(msb)) == msb


def test_with_target_of_takes_the_targets_shape_and_format():
  wide = TINY_TARGET.replace(width=32)
  target_task = TINY.replace(target=wide, target_format="raw",
                             allow_leading_zeros=False)
  got = add.with_target_of(TINY, target_task)
  assert got.target == wide and got.target_format == "raw"
  assert add.with_target_of(TINY, TINY.replace(answer_order="msb")
                            ).answer_order == "msb"
  assert got.allow_leading_zeros  # the experiment's switch is kept
  with pytest.raises(ValueError, match="max_operand_len"):
    add.with_target_of(add.AdditionTaskConfig(), TINY)


def test_load_target_for_merges_the_checkpoints_target(tmp_path, tiny_target_params):
  raw = TINY.replace(target_format="raw")
  add.save_target(tmp_path / "t", tiny_target_params, raw)
  params, task = add.load_target_for(tmp_path / "t", TINY)
  assert task == raw
  same = jax.tree.map(np.array_equal, params, tiny_target_params)
  assert all(jax.tree.leaves(same))
  with pytest.raises(checkpoint.CheckpointError, match="max_operand_len"):
    add.load_target_for(tmp_path / "t", add.AdditionTaskConfig())


def test_config_validation():
  with pytest.raises(ValueError, match="target.max_len"):
    add.AdditionTaskConfig(target=tfm.TransformerConfig(max_len=20))
  with pytest.raises(ValueError, match="max_len"):
    add.AdditionTaskConfig(max_len=18)
  with pytest.raises(ValueError, match="max_operand_len"):
    add.AdditionTaskConfig(max_operand_len=0)
  assert hash(TINY) == hash(TINY.replace())
  d = checkpoint.config_to_dict(TINY)
  assert d["target"]["dtype"] == "float32"
  assert add.AdditionTaskConfig.from_dict(d) == TINY


# ----------------------------------------------------------------------------
# greedy_decode_ragged.


def test_greedy_decode_ragged_matches_per_row_greedy_decode():
  cfg = tfm.TransformerConfig(vocab_size=6, max_len=7, num_layers=1, width=16,
                              num_heads=2, mlp_ratio=2, bos_id=3, eos_id=4, pad_id=5)
  tr = tfm.make_transformer(cfg)
  params = jax.jit(tr.model.init)(jax.random.key(3))
  tokens = jnp.array([[0, 1, 2, 0], [2, 2, 0, 1], [1, 0, 0, 0], [0, 4, 1, 1],
                      [1, 2, 1, 0]], jnp.int32)
  lengths = jnp.array([2, 4, 0, 3, 2], jnp.int32)  # row 3: EOS in its prefix
  num_steps = 3
  got = np.asarray(jax.jit(tr.greedy_decode_ragged, static_argnums=3)(
      params, tokens, lengths, num_steps))
  assert got.shape == (5, num_steps) and got.dtype == np.int32
  step = jax.jit(tr.decode_step)  # one compile: pos is traced
  for i in range(tokens.shape[0]):  # unbatched greedy decode of row i alone
    prefix = np.asarray(tokens[i, :int(lengths[i])]).tolist()
    cache, tok, done, want = tr.init_cache(1), cfg.bos_id, False, []
    for pos in range(len(prefix) + num_steps):
      logits, cache = step(params, cache, jnp.array([tok], jnp.int32), pos)
      tok = prefix[pos] if pos < len(prefix) else int(jnp.argmax(logits[0]))
      tok = cfg.pad_id if done else tok
      done |= tok == cfg.eos_id
      if pos >= len(prefix):
        want.append(tok)
    np.testing.assert_array_equal(got[i], want, err_msg=f"row {i}")
  np.testing.assert_array_equal(got[3], [cfg.pad_id] * num_steps)  # EOS in prefix
  with pytest.raises(ValueError):
    tr.greedy_decode_ragged(params, tokens, lengths, 4)  # 4 + 4 > 7


# ----------------------------------------------------------------------------
# Checkpoints.


def test_checkpoint_round_trip(tmp_path, tiny_target_params):
  meta = {"config": checkpoint.config_to_dict(TINY), "steps": 3}
  path = tmp_path / "target"
  checkpoint.save_params(path, tiny_target_params, meta)
  params, loaded = checkpoint.load_params(
      path, expected_metadata={"config": TINY},
      like=jax.eval_shape(add.make_target(TINY).model.init, jax.random.key(0)))
  assert loaded == meta
  jax.tree.map(np.testing.assert_array_equal, params, tiny_target_params)
  with pytest.raises(checkpoint.CheckpointError, match="already exists"):
    checkpoint.save_params(path, tiny_target_params, meta)
  checkpoint.save_params(path, tiny_target_params, {"steps": 4}, overwrite=True)
  assert checkpoint.load_metadata(path) == {"steps": 4}


_SAVE_ON_DEVICE_3 = """
import sys
import jax, jax.numpy as jnp
from banel_jax.runtime import checkpoint
w = jax.device_put(jnp.arange(6.0).reshape(2, 3), jax.devices()[3])
checkpoint.save_params(sys.argv[1], {"w": w}, {"saved_on": str(w.devices())})
"""


def test_checkpoint_written_on_another_topology_loads_on_this_device(
    tmp_path, four_cpu_devices_env):
  # A checkpoint records each array's sharding; one saved on device 3 of a
  # 4-device process (or on CPU, then loaded on a GPU) used to fail to restore
  # with orbax's "Topology mismatch". It must land on this process's device.
  assert jax.device_count() < 4
  subprocess.run([sys.executable, "-c", _SAVE_ON_DEVICE_3, str(tmp_path / "p")],
                 env=four_cpu_devices_env, check=True, capture_output=True)
  params, meta = checkpoint.load_params(tmp_path / "p")
  assert "3" in meta["saved_on"]
  assert params["w"].devices() == {jax.devices()[0]}
  np.testing.assert_array_equal(params["w"], np.arange(6.0).reshape(2, 3))


def test_checkpoint_errors_name_the_problem(tmp_path, tiny_target_params):
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint directory"):
    checkpoint.load_params(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="missing params"):
    checkpoint.load_params(tmp_path / "empty")
  path = tmp_path / "ckpt"
  checkpoint.save_params(path, tiny_target_params,
                         {"config": checkpoint.config_to_dict(TINY)})
  other = TINY.replace(target=TINY_TARGET.replace(width=32))
  with pytest.raises(checkpoint.CheckpointError, match="config.target.width: saved 16"):
    checkpoint.load_params(path, expected_metadata={"config": other})
  like = jax.eval_shape(add.make_target(other).model.init, jax.random.key(0))
  with pytest.raises(checkpoint.CheckpointError, match="do not match"):
    checkpoint.load_params(path, like=like)
  with pytest.raises(TypeError):
    checkpoint.save_params(tmp_path / "bad", tiny_target_params, {"x": object()})


def test_jax_well_formed_mask_equals_the_host_parser():
  """The jit-able grammar (BaNEL's free support check) is the parser's, on the
  hand-checked cases and on 4,000 random token rows (mostly malformed)."""
  texts = [t for t, _, _ in GRAMMAR_CASES]
  rng = np.random.default_rng(0)
  random_rows = rng.integers(0, 16, size=(4000, 24)).astype(np.int32)
  # make a share of them close to well-formed: digits, one '+', '=', EOS
  for i in range(0, 4000, 2):
    la, lb = rng.integers(1, 10, size=2)
    row = list(rng.integers(0, 10, la)) + [add.PLUS_ID] + list(
        rng.integers(0, 10, lb)) + [add.EQUALS_ID, add.EOS_ID]
    random_rows[i, :len(row)] = row
  for x in (add.encode_batch(texts, max_len=24), random_rows):
    mask = jax.jit(add.well_formed_mask, static_argnums=(1, 2))
    for zeros in (True, False):
      want = add.is_well_formed(x, 8, allow_leading_zeros=zeros)
      np.testing.assert_array_equal(np.asarray(mask(jnp.asarray(x), 8, zeros)), want)
  assert 0.2 < add.is_well_formed(random_rows, 8).mean() < 0.5  # both kinds
  with pytest.raises(ValueError, match="int"):
    add.well_formed_mask(jnp.zeros((3, 24), jnp.float32))
