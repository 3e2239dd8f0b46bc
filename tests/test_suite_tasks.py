"""The suite's task zoo: shipped models, oracles against reference checkers,
grammars under jit, exact rates, model exactness, reproducible pretraining."""

import dataclasses
import itertools
import json
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from banel_jax.suite import models, rules, tasks, training
from banel_jax.suite.tasks import TASKS, get_task

NAMES = list(TASKS)
GRAMMAR_TASKS = ("addition_small", "stack_program", "brackets", "smiles_like")


@pytest.fixture(scope="module")
def samples():
  """512 samples of every task's pretrained model (one compile per task)."""
  out = {}
  for name in NAMES:
    s = get_task(name).setup()
    out[name] = np.asarray(jax.jit(s.model.sample, static_argnums=2)(
        s.prior_params, jax.random.key(3), 512))
  return out


def _random_rows(name, n=2000, seed=0):
  """Uniformly random rows of a task's event shape and values."""
  s = get_task(name).setup()
  shape = (n,) + tuple(s.model.event_shape)
  return np.random.default_rng(seed).integers(0, s.num_values, shape).astype(np.int32)


# ------------------------------------------------------------------ registry


def test_tasks_are_eight_kinds_with_the_tuning_half_first():
  assert len(TASKS) >= 8
  halves = [t.half for t in TASKS.values()]
  assert halves == sorted(halves, key=lambda h: h != "tuning")
  assert [n for n, t in TASKS.items() if t.half == "tuning"] == [
      "toy1d_far", "motif_tokens", "addition_small", "stack_program"]
  assert [n for n, t in TASKS.items() if t.half == "held_out"] == [
      "hidden_product", "brackets", "lattice_path", "smiles_like"]
  assert len({t.kind for t in TASKS.values()}) == len(TASKS)
  for name, t in TASKS.items():
    assert t.name == name and re.fullmatch(r"[a-z][a-z0-9_]*", name)
    assert "\n" not in t.kind and t.kind
    assert 500 <= t.nre_budget <= 3000 and 50 <= t.samples_per_round <= 200


def test_get_task_names_the_valid_tasks_on_a_bad_name():
  assert get_task("brackets") is TASKS["brackets"]
  with pytest.raises(KeyError) as e:
    get_task("no_such_task")
  assert "no_such_task" in str(e.value)
  for name in NAMES:
    assert name in str(e.value)
  with pytest.raises(KeyError, match="motif_tokens"):
    tasks.pretrain("nope", "unused")


def test_task_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    TASKS["brackets"].nre_budget = 1


# ------------------------------------------------------------------ shipped files


@pytest.mark.parametrize("name", NAMES)
def test_shipped_files_load_are_small_and_in_range(name):
  npz, js = tasks.asset_paths(name)
  assert npz.stat().st_size < 200_000 and js.stat().st_size < 200_000
  params = tasks.load_pretrained(name)
  record = tasks.load_record(name)
  assert record["task"] == name and record["half"] == TASKS[name].half
  assert record["model"]["param_count"] == tasks.param_count(params)
  assert record["pretrain"] == json.loads(json.dumps(tasks.DEFINITIONS[name].settings))
  m = record["measurement"]
  lo, hi = tasks.RATE_RANGE
  assert m["samples"] >= 200_000
  assert m["rate"] == m["hits"] / m["samples"] and m["hits"] > 0
  assert lo <= m["interval"][0] <= m["rate"] <= m["interval"][1] <= hi
  if m["exact_rate"] is not None:
    assert lo <= m["exact_rate"] <= hi
    assert m["interval"][0] <= m["exact_rate"] <= m["interval"][1]
  for key in ("seed",):
    assert key in record["pretrain"]


@pytest.mark.parametrize("name", NAMES)
def test_setup_fields_and_oracle_contract(name, samples):
  t = get_task(name)
  s = t.setup()
  assert s is t.setup()  # cached per process
  assert s.name == name
  has_grammar = name in GRAMMAR_TASKS
  assert (s.support is not None) == has_grammar == (s.malformed is not None)
  assert ("banel_support" in s.methods) == has_grammar
  assert s.methods[0] == "banel" and "exact_count" not in s.methods
  assert (s.prior_exact_rate is not None) == (name in ("toy1d_far", "hidden_product"))
  assert s.token_log_prob is None and s.token_mask is None
  x = samples[name]
  assert x.shape == (512,) + tuple(s.model.event_shape) and x.dtype == np.int32
  r = s.oracle(x)
  assert isinstance(r, np.ndarray) and r.dtype == np.float32 and r.shape == (512,)
  assert set(np.unique(r)) <= {0.0, 1.0}
  np.testing.assert_array_equal(s.oracle(x), r)  # deterministic
  f = s.featurize(jnp.asarray(x[:4]))
  assert f.shape[0] == 4 and f.ndim == 2
  lp = s.model.log_prob(s.prior_params, jnp.asarray(x))
  assert lp.shape == (512,) and bool(jnp.all(jnp.isfinite(lp)))


@pytest.mark.parametrize("name", GRAMMAR_TASKS)
def test_grammar_support_under_jit_agrees_with_malformed(name, samples):
  s = get_task(name).setup()
  x = np.concatenate([samples[name], _random_rows(name)])
  host = ~s.malformed(x)
  jitted = np.asarray(jax.jit(s.support)(jnp.asarray(x)))
  np.testing.assert_array_equal(host, jitted)
  assert host.dtype == bool and host.shape == (len(x),)
  assert host[:512].mean() > 0.5  # the pretrained model mostly writes valid rows
  assert not np.any(s.oracle(x)[~host])  # invalid rows never succeed


# ------------------------------------------------------------------ references


def _toy_ref(row):
  return abs(abs(np.linspace(-3, 3, 61)[row]) - 2.8) < 1e-9


def _hp_ref(row):
  w = (1, 3, 5, 7, 1, 3)
  return row[0] == 7 and row[5] == 7 and sum(a * b for a, b in zip(w, row)) % 8 == 3


def _motif_ref(row):
  return " 2 5 5 1 " in " " + " ".join(map(str, row)) + " "


def _body(row, tokens, end):
  """The text before the first end token, or None if anything but end tokens
  follows it or a token is out of range."""
  if any(not 0 <= t < len(tokens) for t in row):
    return None
  names = [tokens[t] for t in row]
  k = names.index(end) if end in names else len(names)
  if any(n != end for n in names[k:]):
    return None
  return names[:k]


def _brackets_ref(row):
  body = _body(row, rules.BRACKET_TOKENS, "$")
  if not body:
    return False, False
  stack, deepest = [], 0
  for c in body:
    if c in "([":
      stack.append(c)
      deepest = max(deepest, len(stack))
    elif not stack or {"(": ")", "[": "]"}[stack.pop()] != c:
      return False, False
  return not stack, not stack and deepest >= 4


def _addition_ref(row):
  text = "".join(rules.ADDITION_TOKENS[t] for t in row)
  m = re.fullmatch(r"(\d{1,3})\+(\d{1,3})=_*", text)
  if not m:
    return False, False
  a, b = m.group(1)[::-1], m.group(2)[::-1]
  out, carry = 0, 0
  for col in range(4):
    da = int(a[col]) if col < len(a) else 0
    db = int(b[col]) if col < len(b) else 0
    if col == 1 and len(a) >= 2 and len(b) >= 2 and a[1] == "7" and b[1] == "7":
      carry = 0  # the hidden bug
    out += (da + db + carry) % 10 * 10**col
    carry = (da + db + carry) // 10
  return True, out != int(m.group(1)) + int(m.group(2))


def _smiles_ref(row):
  body = _body(row, rules.SMILES_TOKENS, "$")
  if not body:
    return False, False
  prev, depth, rings_open, atoms = "start", 0, {}, 0
  n_n, rings, carbonyl = 0, 0, False
  bonded = ("atom", "ring", "close")
  for c in body:
    if c in "CNO":
      carbonyl |= c == "O" and prev == "="
      n_n += c == "N"
      atoms += 1
      prev = "atom"
    elif c == "=":
      if prev not in bonded + ("open",):
        return False, False
      prev = "="
    elif c == "(":
      if prev not in bonded:
        return False, False
      depth, prev = depth + 1, "open"
    elif c == ")":
      if prev not in bonded or depth == 0:
        return False, False
      depth, prev = depth - 1, "close"
    else:  # ring digit
      if prev not in ("atom", "ring"):
        return False, False
      if c in rings_open:
        if atoms - 1 - rings_open.pop(c) < 2:
          return False, False
        rings += 1
      else:
        rings_open[c] = atoms - 1
      prev = "ring"
  valid = prev in bonded and depth == 0 and not rings_open
  return valid, valid and rings >= 1 and carbonyl and n_n >= 2


def _stack_ref(row):
  body = _body(row, rules.STACK_TOKENS, "END")
  if not body:
    return False, False
  stack = []
  for op in body:
    if op.startswith("P"):
      stack.append(int(op[1]))
    elif op == "DUP":
      if not stack:
        return False, False
      stack.append(stack[-1])
    else:
      if len(stack) < 2:
        return False, False
      b, a = stack.pop(), stack.pop()
      if op == "SWAP":
        stack += [b, a]
      else:
        stack.append({"ADD": a + b, "SUB": a - b, "MUL": a * b}[op])
  valid = len(stack) == 1
  return valid, valid and stack[0] == 17


def _lattice_ref(row):
  side = tasks.LATTICE_SIDE
  grid = np.asarray(row).reshape(side, side)
  seen = {(i, 0) for i in range(side) if grid[i, 0] == 1}
  todo = list(seen)
  while todo:
    i, j = todo.pop()
    for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
      if 0 <= a < side and 0 <= b < side and grid[a, b] == 1 and (a, b) not in seen:
        seen.add((a, b))
        todo.append((a, b))
  return any(j == side - 1 for _, j in seen)


def _ref(name):
  """``row -> (valid, success)`` of a task, written independently."""
  plain = {"toy1d_far": _toy_ref, "hidden_product": _hp_ref,
           "motif_tokens": _motif_ref, "lattice_path": _lattice_ref}
  if name in plain:
    return lambda row: (True, bool(plain[name](row)))
  return {"brackets": _brackets_ref, "addition_small": _addition_ref,
          "smiles_like": _smiles_ref, "stack_program": _stack_ref}[name]


def _rows(name, texts):
  tokens, length = {
      "brackets": (rules.BRACKET_TOKENS, tasks.BRACKET_LEN),
      "addition_small": (rules.ADDITION_TOKENS, tasks.ADDITION_LEN),
      "smiles_like": (rules.SMILES_TOKENS, tasks.SMILES_LEN),
      "stack_program": (rules.STACK_TOKENS, tasks.STACK_LEN)}[name]
  return rules.encode(texts, tokens, length)


SIDE = tasks.LATTICE_SIDE
LATTICE_ROW = np.zeros((SIDE, SIDE), np.int32)
LATTICE_ROW[2, :] = 1
LATTICE_BEND = np.zeros((SIDE, SIDE), np.int32)
LATTICE_BEND[0, :3] = 1
LATTICE_BEND[0:5, 2] = 1
LATTICE_BEND[4, 2:] = 1
LATTICE_GAP = LATTICE_ROW.copy()
LATTICE_GAP[2, 3] = 0
LATTICE_DIAGONAL = np.eye(SIDE, dtype=np.int32)
LATTICE_U_TURN = np.zeros((SIDE, SIDE), np.int32)  # reaches the right, not from the left
LATTICE_U_TURN[0, 1:] = 1
LATTICE_U_TURN[:, 1] = 1

# (successes, failures) written by hand
HAND = {
    "toy1d_far": ([2, 58], [30, 57, 60]),
    "hidden_product": ([[7, 0, 0, 1, 0, 7], [7, 1, 1, 2, 1, 7]],
                       [[7, 0, 0, 0, 0, 7], [6, 0, 0, 1, 0, 7]]),
    "motif_tokens": ([[2, 5, 5, 1] + [0] * 8, [0] * 8 + [2, 5, 5, 1]],
                     [[2, 5, 1, 5] + [0] * 8, [1, 5, 5, 2] + [0] * 8]),
    "lattice_path": ([LATTICE_ROW.ravel(), LATTICE_BEND.ravel()],
                     [LATTICE_GAP.ravel(), LATTICE_DIAGONAL.ravel(),
                      LATTICE_ROW.T.ravel(), LATTICE_U_TURN.ravel()]),
    "brackets": (["([[()]])", "(((())))()", "[([()])]"],
                 ["([])", "(((()))", "([)]", "(((]]])", "$()"]),
    "addition_small": (["78+79=", "178+279=", "078+77=", "979+175="],
                       ["78+69=", "7+79=", "88+79=", "78+79+", "1+2", "1234+5="]),
    "smiles_like": (["C1NCNC1=O", "NC(=O)C1CCN1", "C1CC(N)N1C=O"],
                    ["C1NCCC1=O", "C1NCNC1O", "C1N1CNC=O", "C1NCNC=O", "=CN"]),
    "stack_program": (["P3 P3 MUL P2 MUL P1 SUB", "P3 P2 ADD P3 MUL P2 ADD",
                       "P1 P3 P3 MUL P2 MUL SWAP SUB"],
                      ["P3 P3 MUL P2 MUL", "P3 P3 MUL P2 MUL P1 SUB P1",
                       "ADD P3", "P1 P1 P1 ADD END"]),
}


@pytest.mark.parametrize("name", NAMES)
def test_oracle_on_hand_written_examples(name):
  wins, losses = HAND[name]
  if name in GRAMMAR_TASKS:
    x_win, x_loss = _rows(name, wins), _rows(name, losses)
  else:
    x_win, x_loss = np.asarray(wins, np.int32), np.asarray(losses, np.int32)
  oracle = get_task(name).setup().oracle
  np.testing.assert_array_equal(oracle(x_win), np.ones(len(x_win), np.float32))
  np.testing.assert_array_equal(oracle(x_loss), np.zeros(len(x_loss), np.float32))
  ref = _ref(name)
  assert all(ref(r.tolist())[1] for r in x_win)
  assert not any(ref(r.tolist())[1] for r in x_loss)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_and_grammar_agree_with_the_reference(name, samples):
  s = get_task(name).setup()
  x = np.concatenate([samples[name], _random_rows(name, 1000)])
  if name == "hidden_product":  # a denser supply of successes
    x = tasks.all_configurations()[::97]
  ref = _ref(name)
  expected = np.array([ref(r.tolist()) for r in x])
  np.testing.assert_array_equal(s.oracle(x) > 0, expected[:, 1])
  if s.malformed is not None:
    np.testing.assert_array_equal(~s.malformed(x), expected[:, 0])


def test_grammar_data_are_valid_and_success_free():
  d = tasks.DEFINITIONS

  def small(name):
    return {**d[name].settings, "walks": 3000}

  x = tasks._brackets_data(small("brackets"))
  valid, state = rules.grammar_scan(rules.BRACKETS, x)
  assert len(x) > 100 and valid.all() and state["max_depth"].max() <= 3
  for name, make, grammar in (
      ("addition_small", tasks._addition_data, rules.ADDITION),
      ("smiles_like", tasks._smiles_data, rules.SMILES),
      ("stack_program", tasks._stack_data, rules.STACK)):
    x = make(small(name))
    assert len(x) > 100 and rules.grammar_valid(grammar, x).all()
  data, counts = tasks._remove_successes(np.asarray(HAND["motif_tokens"][0]
                                                    + HAND["motif_tokens"][1]),
                                         tasks.motif_success)
  assert counts == {"generated": 4, "successes_removed": 2, "size": 2}
  assert not tasks.motif_success(data).any()


def test_decode_and_encode_round_trip():
  texts = ["P3 DUP MUL", "P1"]
  assert rules.decode(rules.encode(texts, rules.STACK_TOKENS, 10),
                      rules.STACK_TOKENS) == texts
  assert rules.decode(rules.encode(["C1CC1"], rules.SMILES_TOKENS, 14),
                      rules.SMILES_TOKENS) == ["C1CC1"]
  with pytest.raises(ValueError, match="unknown token"):
    rules.encode(["C1X"], rules.SMILES_TOKENS, 14)


# ------------------------------------------------------------------ exact rates


def test_toy_exact_rate_matches_a_direct_computation():
  s = get_task("toy1d_far").setup()
  c = np.linspace(-3.0, 3.0, 61)
  p = np.exp(-0.5 * c**2)
  p /= p.sum()
  direct = p[np.isclose(np.abs(c), 2.8)].sum()
  assert s.prior_exact_rate == pytest.approx(direct, rel=1e-5)
  state = types.SimpleNamespace(proposal=types.SimpleNamespace(params=s.prior_params))
  assert s.exact_rate(state) == pytest.approx(direct, rel=1e-5)
  assert tasks.load_record("toy1d_far")["measurement"]["exact_rate"] == \
      pytest.approx(direct, rel=1e-5)


def test_hidden_product_exact_rate_matches_enumeration():
  s = get_task("hidden_product").setup()
  logits = np.asarray(s.prior_params["logits"], np.float64)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  configs = tasks.all_configurations()
  assert configs.shape == (8**6, 6) and len(np.unique(configs, axis=0)) == 8**6
  p = np.exp(logp[np.arange(6)[None], configs].sum(axis=1))
  assert p.sum() == pytest.approx(1.0, abs=1e-9)
  direct = p[tasks.hidden_product_success(configs) > 0].sum()
  assert s.prior_exact_rate == pytest.approx(direct, rel=1e-4)
  policy = types.SimpleNamespace(policy=types.SimpleNamespace(params=s.prior_params))
  assert s.exact_rate(policy) == pytest.approx(direct, rel=1e-4)
  assert tasks.RATE_RANGE[0] <= direct <= tasks.RATE_RANGE[1]


def test_exact_rejection_rates_remove_the_seen_failures():
  from banel_jax.core import sample_set
  s = get_task("toy1d_far").setup()
  seen = sample_set.add_samples(sample_set.empty_sample_set(8),
                                jnp.array([30, 31], jnp.int32),
                                jnp.array([True, True]))
  state = types.SimpleNamespace(failures=seen)
  c = np.linspace(-3.0, 3.0, 61)
  p = np.exp(-0.5 * c**2)
  p[[30, 31]] = 0.0
  assert s.exact_rate(state) == pytest.approx(p[[2, 58]].sum() / p.sum(), rel=1e-5)


# ------------------------------------------------------------------ models


def test_product_model_is_normalised_and_samples_its_marginals():
  model = models.make_product_model(3, 3, init_scale=1.0)
  params = model.init(jax.random.key(0))
  x = jnp.asarray(list(itertools.product(range(3), repeat=3)), jnp.int32)
  assert float(jnp.exp(model.log_prob(params, x)).sum()) == pytest.approx(1.0, abs=1e-5)
  s = np.asarray(model.sample(params, jax.random.key(1), 40_000))
  want = np.asarray(jax.nn.softmax(params["logits"], axis=-1))
  for i in range(3):
    got = np.bincount(s[:, i], minlength=3) / len(s)
    np.testing.assert_allclose(got, want[i], atol=0.015)
  bad = jnp.array([[0, 3, 0], [-1, 0, 0]], jnp.int32)
  assert bool(jnp.all(jnp.isneginf(model.log_prob(params, bad))))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_model_is_normalised_and_samples_its_log_prob(temperature):
  model = models.make_sequence_model(4, 3, 8, init_scale=1.0)
  params = models.with_temperature(model.init(jax.random.key(0)), temperature)
  x = jnp.asarray(list(itertools.product(range(3), repeat=4)), jnp.int32)
  p = np.exp(np.asarray(model.log_prob(params, x), np.float64))
  assert p.sum() == pytest.approx(1.0, abs=1e-5)
  n = 40_000
  s = np.asarray(jax.jit(model.sample, static_argnums=2)(params, jax.random.key(1), n))
  idx = s @ (3 ** np.arange(3, -1, -1))
  freq = np.bincount(idx, minlength=81) / n
  assert 0.5 * np.abs(freq - p).sum() < 0.03  # total variation
  bad = jnp.array([[0, 3, 0, 0], [-1, 0, 0, 0]], jnp.int32)
  assert bool(jnp.all(jnp.isneginf(model.log_prob(params, bad))))


def test_sequence_param_count():
  model = models.make_sequence_model(5, 4, 8)
  params = model.init(jax.random.key(2))
  assert models.sequence_param_count(5, 4, 8) == tasks.param_count(params)


def test_npz_round_trip(tmp_path):
  params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}
  training.save_params(tmp_path / "p.npz", params)
  back = training.load_params(tmp_path / "p.npz")
  assert set(back) == {"a", "b"} and back["b"].dtype == jnp.float32
  np.testing.assert_array_equal(back["a"], params["a"])


# ------------------------------------------------------------------ pretraining


@pytest.mark.parametrize("name", ["hidden_product", "toy1d_far"])
def test_pretrain_reproduces_the_shipped_params_bit_for_bit(name, tmp_path):
  record = tasks.pretrain(name, tmp_path)
  shipped = tasks.load_pretrained(name)
  fresh = tasks.load_pretrained(name, tmp_path)
  assert set(fresh) == set(shipped)
  for k in shipped:
    np.testing.assert_array_equal(np.asarray(fresh[k]), np.asarray(shipped[k]))
  old = tasks.load_record(name)
  assert record["measurement"]["hits"] == old["measurement"]["hits"]
  assert record["pretrain"] == old["pretrain"]


@pytest.mark.slow
def test_pretrain_reproduces_a_sequence_model_bit_for_bit(tmp_path):
  """The neural pretraining (data walks, Adam, measurement) is deterministic too."""
  name = "motif_tokens"
  record = tasks.pretrain(name, tmp_path)
  shipped = tasks.load_pretrained(name)
  fresh = tasks.load_pretrained(name, tmp_path)
  for k in shipped:
    np.testing.assert_array_equal(np.asarray(fresh[k]), np.asarray(shipped[k]))
  assert record["measurement"]["hits"] == tasks.load_record(name)["measurement"]["hits"]
