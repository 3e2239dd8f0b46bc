"""LoRA adapters over a frozen base (banel_jax.models.lora).

A tiny random Llama (built from a ``config.json`` dictionary, prompted with
``make_prompted_model``) is the base. A fresh adapter must be the base model
exactly; gradients reach the adapters only, and agree with the chain rule
through the full kernel; the parameter and byte counts are those of the
adapter pytrees; BaNEL runs two rounds on adapters and its region bank holds
adapters only; a run directory's checkpoint of that state resumes the run
bit for bit. The memory figures at Qwen2.5-0.5B's shapes come from
``jax.eval_shape`` (nothing allocated).

``BanelRunner`` given the ``LoraModel`` passes the base to its programs as an
argument (no program embeds it; the closure path's every program does), runs
the very rounds of ``lm.jit``, matches the closure path, checkpoints the
adapters' state only and resumes; with the seeds sharded over 4 devices the
base is replicated on each.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import banel_jax as bj
from banel_jax.models import hf, lora
from tree_utils import leaves_as_numpy as _leaves

TINY = {"model_type": "llama", "vocab_size": 13, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 64,
        "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0}
# Qwen2.5-0.5B's config.json, the fields that set its shapes.
QWEN2_5_0_5B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
                "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                "tie_word_embeddings": True}
PROMPT = (1, 5, 7)
C = 3  # completion length
M = 16  # samples per round


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)


def _at(tree, path):
  """The subtree of ``tree`` at the names ``path``."""
  for name in path:
    tree = tree[name]
  return tree


def _count(tree):
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
  cfg = hf.config_from_hf(TINY)
  gen = hf.make_prompted_model(cfg, PROMPT, C)
  base = jax.jit(gen.model.init)(jax.random.key(0))
  x = jax.jit(gen.model.sample, static_argnums=2)(base, jax.random.key(1), 8)
  return types.SimpleNamespace(cfg=cfg, gen=gen, base=base, x=x,
                               log_prob=jax.jit(gen.model.log_prob)(base, x))


def _random_b(adapters, key):
  """The adapters with ``b`` drawn at random (a trained-looking adapter)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(adapters)
  out = [0.5 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
         if jax.tree_util.keystr(path).endswith("['b']") else leaf
         for i, (path, leaf) in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


@pytest.mark.parametrize("mode", ["low_rank", "merge"])
def test_fresh_adapter_is_the_base_model_exactly(tiny, mode):
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=2, targets="attention_mlp",
                       mode=mode)
  assert lm.mode == mode
  adapters = lm.model.init(jax.random.key(2))
  assert isinstance(lm.model.log_prob, bj.SplitLogProb)  # the base's split is kept
  np.testing.assert_array_equal(jax.jit(lm.model.log_prob)(adapters, tiny.x),
                                tiny.log_prob)
  np.testing.assert_array_equal(lm.jit(lm.model.log_prob)(adapters, tiny.x),
                                tiny.log_prob)
  key = jax.random.key(3)
  np.testing.assert_array_equal(
      lm.jit(lm.model.sample, static_argnums=2)(adapters, key, 8),
      jax.jit(tiny.gen.model.sample, static_argnums=2)(tiny.base, key, 8))


def test_auto_mode_takes_the_low_rank_path_for_hf_decoders(tiny):
  assert lora.lora_model(tiny.gen.model, tiny.base, rank=2).mode == "low_rank"
  # a model that is no Flax module: merged
  tab = bj.GenerativeModel(
      init=lambda k: {"w": {"kernel": jnp.zeros((4, 3))}},
      log_prob=lambda p, x: jax.nn.log_softmax(p["w"]["kernel"].sum(0))[x],
      sample=lambda p, k, n: jax.random.categorical(k, p["w"]["kernel"].sum(0),
                                                    shape=(n,)),
      event_shape=(), dtype=jnp.int32)
  lm = lora.lora_model(tab, {"w": {"kernel": jnp.ones((4, 3))}}, rank=1,
                       targets=lambda path, leaf: path[-1] == "kernel")
  assert lm.mode == "merge"
  with pytest.raises(ValueError, match="mode='low_rank' needs"):
    lora.lora_model(tab, {"w": {"kernel": jnp.ones((4, 3))}}, rank=1, mode="low_rank",
                    targets=lambda path, leaf: path[-1] == "kernel")


def test_trained_adapter_is_the_merged_kernel(tiny):
  """``x @ W + s (x @ a) @ b`` (low rank) and ``W + s a @ b`` (merged) give one
  model, and the adapter moves it away from the base."""
  low = lora.lora_model(tiny.gen.model, tiny.base, rank=2, alpha=3.0,
                        targets="attention_mlp")
  merge = lora.lora_model(tiny.gen.model, tiny.base, rank=2, alpha=3.0,
                          targets="attention_mlp", mode="merge")
  adapters = _random_b(low.model.init(jax.random.key(2)), jax.random.key(4))
  merged = low.merge(adapters)
  want = jax.jit(tiny.gen.model.log_prob)(merged, tiny.x)
  assert np.max(np.abs(np.asarray(want) - np.asarray(tiny.log_prob))) > 1e-2
  np.testing.assert_allclose(jax.jit(low.model.log_prob)(adapters, tiny.x), want,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(merge.model.log_prob)(adapters, tiny.x), want,
                             rtol=1e-6, atol=1e-6)
  targeted = {t.path for t in low.targets}
  for path, w in jax.tree_util.tree_flatten_with_path(tiny.base)[0]:
    names = tuple(str(e.key) for e in path)
    m = _at(merged, names)
    if names in targeted:
      pair = _at(adapters, names)
      np.testing.assert_allclose(m, w + 1.5 * pair["a"] @ pair["b"], rtol=1e-6,
                                 atol=1e-6)
    else:
      np.testing.assert_array_equal(m, w)  # lm_head, embeddings, norms: untouched


def test_gradients_reach_the_adapters_only(tiny):
  """The gradient is a pytree of adapters, and it is the chain rule through the
  full kernel: ``d/db = s a^T dL/dW`` and, at ``b = 0``, ``d/da = 0``."""
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=2, alpha=4.0)
  adapters = lm.model.init(jax.random.key(2))
  loss = lambda a: jnp.sum(lm.model.log_prob(a, tiny.x))
  grads = jax.jit(jax.grad(loss))(adapters)
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  assert _count(grads) == lora.adapter_param_count(tiny.base, 2)
  full = jax.jit(jax.grad(lambda p: jnp.sum(tiny.gen.model.log_prob(p, tiny.x))))(
      tiny.base)
  assert len(lm.targets) == 4  # q, k, v, o of the one layer
  for t in lm.targets:
    g, a = _at(grads, t.path), _at(adapters, t.path)["a"]
    np.testing.assert_array_equal(g["a"], 0.0)
    want = lm.scale * a.T @ _at(full, t.path)
    assert np.max(np.abs(want)) > 1e-4
    np.testing.assert_allclose(g["b"], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("targets,per_layer", [
    # rank 3 * (in + out): q 16->16, k and v 16->8, o 16->16
    ("attention", 3 * (32 + 24 + 24 + 32)),
    # and gate, up 16->32, down 32->16
    ("attention_mlp", 3 * (32 + 24 + 24 + 32 + 48 + 48 + 48)),
])
def test_param_and_byte_counts_are_the_adapter_pytrees(tiny, targets, per_layer):
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=3, targets=targets)
  adapters = lm.model.init(jax.random.key(2))
  n = _count(adapters)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(adapters))
  assert n == per_layer  # one layer
  assert lora.adapter_param_count(tiny.cfg, 3, targets) == n
  assert lora.adapter_param_count(tiny.base, 3, targets) == n
  assert lora.region_bytes(tiny.cfg, 3, targets) == 2 * nbytes
  assert lora.region_bytes(tiny.cfg, 3, targets, dtype=jnp.bfloat16) == nbytes
  mem = lora.lora_memory(tiny.cfg, 3, targets)
  assert mem.base_params == _count(tiny.base)
  assert mem.region_params == 2 * n and mem.region_bytes == 2 * nbytes
  assert mem.full_region_bytes == 2 * sum(x.nbytes for x in jax.tree.leaves(tiny.base))


def test_qwen2_5_0_5b_region_is_under_one_percent_of_the_base():
  cfg = hf.config_from_hf(QWEN2_5_0_5B)
  assert (cfg.head_dim, cfg.num_layers, cfg.intermediate_size) == (64, 24, 4864)
  # per layer, rank r: q and o r(896 + 896), k and v r(896 + 128)
  per_layer = 2 * (896 + 896) + 2 * (896 + 128)
  for rank in (8, 16):
    mem = lora.lora_memory(cfg, rank)
    assert mem.base_params == 494_032_768
    assert mem.adapter_params == 24 * rank * per_layer
    assert mem.region_params == {8: 2_162_688, 16: 4_325_376}[rank]
    assert mem.region_fraction < 0.01
    assert mem.full_region_bytes == 2 * 4 * 494_032_768
  # adapting the MLP as well costs more than 1% from rank 8 on
  mlp = lora.lora_memory(cfg, 8, "attention_mlp")
  assert mlp.region_params == 8_798_208 and mlp.region_fraction > 0.01
  # in bfloat16 both the base and the adapters halve
  bf16 = lora.lora_memory(hf.config_from_hf(QWEN2_5_0_5B, dtype=jnp.bfloat16), 8)
  assert bf16.region_bytes == 2 * 2_162_688 and bf16.region_fraction < 0.01


def test_jit_passes_the_base_as_an_argument_not_a_constant(tiny):
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=2)
  adapters = lm.model.init(jax.random.key(2))
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(tiny.base))
  closed = jax.jit(lm.model.log_prob).lower(adapters, tiny.x).as_text()
  passed = lm.jit(lm.model.log_prob).lower(adapters, tiny.x).as_text()
  assert len(closed) > len(passed) + base_bytes  # the base is printed into one
  main = next(line for line in passed.splitlines() if "func.func public @main" in line)
  n_args = len(jax.tree.leaves((tiny.base, adapters, tiny.x)))
  assert main.count("%arg") == n_args


def _flops(fn, *args):
  cost = fn.lower(*args).cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_blocks_below_the_adapters_run_once_for_all_regions():
  """The union test of 4 regions in one vmap, per region, against two
  log_probs (a region's proposal and failure model): with adapters in the top
  block only, the bottom block runs once for all regions; with every block
  adapted nearly everything runs per region. Shapes only: nothing allocated."""
  cfg = hf.config_from_hf({**TINY, "num_hidden_layers": 2})
  gen = hf.make_prompted_model(cfg, PROMPT, C)
  base = jax.eval_shape(gen.model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((16, C), jnp.int32)

  def cost_per_region(targets):
    lm = lora.lora_model(gen.model, base, rank=2, targets=targets)
    assert lm.mode == "low_rank"
    adapters = jax.eval_shape(lm.model.init, jax.random.key(1))
    bank = jax.eval_shape(lambda a: bj.empty_region_bank(a, 4), adapters)
    union = _flops(lm.jit(functools.partial(bj.region_log_ratios, lm.model)), bank, x)
    return union / 4 / (2 * _flops(lm.jit(lm.model.log_prob), adapters, x))

  top = lora.layers_from(1, "attention_mlp")
  assert {t.path[0] for t in lora.adapted_leaves(base, top)} == {"layers_1"}
  assert cost_per_region(top) < 0.75
  assert cost_per_region("attention_mlp") > 0.85


def test_bad_inputs_are_named(tiny):
  model, base = tiny.gen.model, tiny.base
  with pytest.raises(ValueError, match="rank must be a positive int"):
    lora.lora_model(model, base, rank=0)
  with pytest.raises(ValueError, match="rank=9 exceeds min"):
    lora.lora_model(model, base, rank=9)
  with pytest.raises(ValueError, match="matched no parameter"):
    lora.lora_model(model, base, rank=2, targets=lambda path, leaf: False)
  with pytest.raises(ValueError, match="not a known rule"):
    lora.lora_model(model, base, rank=2, targets="mlp_only")
  with pytest.raises(ValueError, match="only 2-D"):
    lora.lora_model(model, base, rank=1, targets=lambda path, leaf: path[-1] == "scale")
  with pytest.raises(ValueError, match="base_params do not fit"):
    lora.lora_model(model, {"w": jnp.ones(3)}, rank=2)
  with pytest.raises(ValueError, match="first must be an int"):
    lora.layers_from(-1)
  with pytest.raises(ValueError, match="matched no parameter"):
    lora.lora_model(model, base, rank=2, targets=lora.layers_from(1))  # one block
  with pytest.raises(ValueError, match="alpha must be"):
    lora.lora_model(model, base, rank=2, alpha=0.0)
  lm = lora.lora_model(model, base, rank=2)
  adapters = lm.model.init(jax.random.key(2))
  wrong = jax.tree.map(lambda a: a[:1], adapters)
  with pytest.raises(ValueError,
                     match=r"k_proj/kernel/a must have shape \(16, 2\), got \(1, 2\)"):
    lm.model.log_prob(wrong, tiny.x)
  with pytest.raises(ValueError, match="adapters lack layers_0/self_attn"):
    lm.model.sample({"a": adapters}, jax.random.key(0), 2)
  with pytest.raises(ValueError, match="with_base"):
    with lm.with_base({"w": jnp.ones(3)}):
      pass


def _oracle(x):
  """Success: a completion that starts with token 3 (about 1 in 13)."""
  return (np.asarray(x)[:, 0] == 3).astype(np.float32)


@pytest.fixture(scope="module")
def two_rounds(tiny):
  """BaNEL (distilled) on LoRA adapters of the tiny decoder: two rounds, every
  function compiled with the base passed as an argument."""
  config = bj.BanelConfig(nre_budget=2 * M, samples_per_round=M, filter_factor=1.2,
                          failure_epochs=2, failure_batch_size=8,
                          failure_learning_rate=0.03, distill_samples=32,
                          distill_epochs=1, distill_batch_size=16,
                          distill_learning_rate=0.03, distill_prior_share=0.5,
                          distill_reset=True, region_strategy="vmap", n_eval=16)
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=2)
  banel = bj.make_banel(lm.model, config)
  fns = types.SimpleNamespace(init=lm.jit(banel.init),
                              propose=lm.jit(banel.propose, static_argnums=2),
                              update=lm.jit(banel.update))
  prior = lm.model.init(jax.random.key(10))
  # states committed to the device, as a restored checkpoint's are: one
  # compilation of ``update`` serves both
  commit = lambda tree: jax.device_put(tree, jax.devices()[0])
  state = commit(fns.init(jax.random.key(11), prior))
  states, batches = [state], []
  for _ in range(2):
    keys = bj.round_keys(state)
    x, _ = fns.propose(state, keys["propose"], M)
    batch = bj.RoundBatch(x, _oracle(x), np.ones(M, bool), np.float32(0.0))
    state, metrics = fns.update(state, batch, keys["update"])
    assert int(metrics["n_failures"]) > 0
    state = commit(state)
    states.append(state)
    batches.append((batch, keys["update"]))
  return types.SimpleNamespace(lm=lm, config=config, fns=fns, prior=prior,
                               states=states, batches=batches)


def test_banel_runs_on_adapters_and_regions_hold_adapters_only(tiny, two_rounds):
  lm, state = two_rounds.lm, two_rounds.states[-1]
  adapters = two_rounds.prior
  bank = state.regions
  assert int(bank.size) == 2 and bank.capacity == 2
  shapes = jax.tree.map(lambda a: (bank.capacity,) + a.shape, adapters)
  for stack in (bank.proposal_params, bank.failure_params):
    assert jax.tree.structure(stack) == jax.tree.structure(adapters)
    assert jax.tree.map(lambda a: a.shape, stack) == shapes
  per_slot = (_count(bank.proposal_params) + _count(bank.failure_params)) // 2
  assert per_slot == 2 * lora.adapter_param_count(tiny.cfg, 2)
  slot_bytes = sum(x.nbytes for x in jax.tree.leaves(
      (bank.proposal_params, bank.failure_params))) // bank.capacity
  assert slot_bytes == lora.region_bytes(tiny.cfg, 2)
  assert slot_bytes < sum(x.nbytes for x in jax.tree.leaves(tiny.base)) / 5
  # the proposal, the failure model and the prior are adapters too, and trained
  for params in (state.proposal.params, state.failure.params, state.prior_params):
    assert jax.tree.structure(params) == jax.tree.structure(adapters)
  _assert_trees_equal(state.prior_params, adapters)
  moved = [np.any(np.asarray(_at(state.failure.params, t.path)["b"]) != 0)
           for t in lm.targets]
  assert all(moved)
  q_proj = ("layers_0", "self_attn", "q_proj", "kernel")
  assert not np.allclose(_at(bank.failure_params, q_proj)["b"][0],
                         _at(bank.proposal_params, q_proj)["b"][0])


def test_checkpoint_round_trip_resumes_the_run(tmp_path, two_rounds):
  """A run directory's checkpoint of the LoRA state after round 1 restores the
  same state, and round 2 from it gives the uninterrupted run's state."""
  fns, states = two_rounds.fns, two_rounds.states
  with bj.RunDirectory(tmp_path / "run", {"config": "lora"}) as run_dir:
    run_dir.save(1, states[1], {"history": []})
  with bj.RunDirectory(tmp_path / "run", {"config": "lora"}) as run_dir:
    step, restored, _ = run_dir.restore(states[0])  # a fresh state as template
  assert step == 1
  _assert_trees_equal(restored, states[1])
  batch, key = two_rounds.batches[1]
  resumed, _ = fns.update(restored, batch, key)
  _assert_trees_equal(resumed, states[2])
  # the adapters alone, as weights: restored against the adapters' shapes
  proposal = states[2].proposal.params
  bj.save_params(tmp_path / "adapters", proposal, {"rank": 2})
  loaded, meta = bj.load_params(
      tmp_path / "adapters", expected_metadata={"rank": 2},
      like=jax.eval_shape(two_rounds.lm.model.init, jax.random.key(0)))
  _assert_trees_equal(loaded, proposal)


# --- the runner: the base as an argument of every program it compiles ------------------


def _without_wall_time(history):
  return [{k: v for k, v in h.items() if k != "wall_time_s"} for h in history]


def _disk_bytes(path):
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _lowered_texts(runner, m):
  """The StableHLO text of the runner's round programs (propose, update, the
  prior-mass diagnostic), lowered for the current state."""
  states = runner.states
  keys = runner._keys(states)
  x, _ = runner._propose(states, keys["propose"], m)
  s = len(runner.seeds)
  batch = bj.RoundBatch(x=x, rewards=jnp.zeros((s, m)),
                        evaluated=jnp.ones((s, m), bool), log_norm=jnp.zeros(s))
  return {"propose": runner._propose.lower(states, keys["propose"], m).as_text(),
          "update": runner._update.lower(states, batch, keys["update"]).as_text(),
          "prior_mass": runner._prior_in_regions.lower(states, keys["eval"]).as_text()}


def _embedded_leaves(text, base):
  """How many of the base's larger leaves appear in ``text`` as constants
  (MLIR prints a dense constant's bytes as upper-case hex)."""
  return sum(np.asarray(w).tobytes().hex().upper() in text
             for w in jax.tree.leaves(base) if np.size(w) >= 64)


def _main_args(text):
  return next(line for line in text.splitlines()
              if "func.func public @main" in line).count("%arg")


@pytest.fixture(scope="module")
def runner_run(tmp_path_factory, two_rounds):
  """The two rounds of ``two_rounds`` through ``BanelRunner``, given the
  ``LoraModel`` itself (the base passed to its programs as an argument), in a
  run directory."""
  path = tmp_path_factory.mktemp("lora_runner") / "run"
  runner = bj.BanelRunner(two_rounds.lm, two_rounds.prior, _oracle, two_rounds.config,
                          seeds=(11,), progress=False, run_dir=path)
  result = runner.run()
  runner.close()
  return types.SimpleNamespace(runner=runner, result=result, path=path)


def test_runner_takes_the_lora_model_and_passes_its_base_as_an_argument(
    tiny, two_rounds, runner_run):
  runner, result = runner_run.runner, runner_run.result
  assert runner.model is two_rounds.lm.model
  assert runner.frozen.params is tiny.base
  assert [h["round"] for h in result.history] == [0, 1, 2]
  assert result.nre_spent == [2 * M]
  # the very run of ``two_rounds`` (``lm.jit`` of another bundle's functions:
  # the same leaves)
  got = _leaves(jax.tree.map(lambda a: a[0], result.states))
  want = _leaves(two_rounds.states[-1])
  assert len(got) == len(want)
  for x, y in zip(got, want):
    np.testing.assert_array_equal(x, y)
  # no program embeds the base (the closure path's do: see below)
  for name, text in _lowered_texts(runner, M).items():
    assert _embedded_leaves(text, tiny.base) == 0, name


def test_runner_results_equal_the_closure_path(tiny, two_rounds, runner_run):
  """The same run given ``lm.model`` (its functions close over the base, which
  every program then embeds): the same samples and history; the params agree
  up to float rounding (XLA folds the embedded base's constants its own way;
  Adam's normalised steps carry a last-bit difference to about 1e-5)."""
  base_leaves = sum(np.size(w) >= 64 for w in jax.tree.leaves(tiny.base))
  closure = bj.BanelRunner(two_rounds.lm.model, two_rounds.prior, _oracle,
                           two_rounds.config, seeds=(11,), progress=False)
  assert closure.frozen is None
  res = closure.run()
  assert _without_wall_time(res.history) == _without_wall_time(
      runner_run.result.history)
  assert [h["success_rate"] for h in res.history if "success_rate" in h] == [
      h["success_rate"] for h in runner_run.result.history if "success_rate" in h]
  for x, y in zip(_leaves(res.states), _leaves(runner_run.result.states)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)
  # each closure-path program holds the base as constants; the runner given
  # the LoraModel takes it as arguments instead (every program runs the whole
  # decoder, so uses every base leaf)
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(tiny.base))
  passed = _lowered_texts(runner_run.runner, M)
  for name, text in _lowered_texts(closure, M).items():
    assert _embedded_leaves(text, tiny.base) == base_leaves, name
    assert len(text) > len(passed[name]) + base_bytes, name
    assert _main_args(passed[name]) == _main_args(text) + len(jax.tree.leaves(tiny.base))


def test_runner_checkpoints_adapters_only_and_resumes(tmp_path, tiny, two_rounds,
                                                      runner_run):
  """The run directory's checkpoints hold the adapters' state, not the base;
  a run stopped after round 1 resumes to the uninterrupted run's end."""
  state_bytes = sum(x.nbytes for x in _leaves(runner_run.result.states))
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(tiny.base))
  step, arrays, host = bj.read_checkpoint(runner_run.path)
  assert step == 2
  assert sum(a.nbytes for a in arrays.values()) == state_bytes
  base_shapes = {np.shape(w) for w in jax.tree.leaves(tiny.base)}
  adapter_shapes = {np.shape(a) for a in jax.tree.leaves(two_rounds.prior)}
  assert not {a.shape[1:] for a in arrays.values()} & (base_shapes - adapter_shapes)
  # on disk: the same checkpoint with the base beside the state is larger by
  # about the base's bytes (a checkpoint's own files weigh more than this tiny
  # state, so the size is compared with that one, not with the state's bytes)
  disk = _disk_bytes(runner_run.path / "checkpoints" / "2")
  with bj.RunDirectory(tmp_path / "with_base", {"config": "lora"}) as run_dir:
    run_dir.save(2, {"state": runner_run.result.states, "base": tiny.base}, host)
  assert disk + base_bytes / 2 < _disk_bytes(tmp_path / "with_base" / "checkpoints")

  path = tmp_path / "run"
  kwargs = {"seeds": (11,), "progress": False, "run_dir": path}
  with bj.BanelRunner(two_rounds.lm, two_rounds.prior, _oracle, two_rounds.config,
                      **kwargs) as first:
    first.evaluate_start()
    first.step()
  calls = []
  counting = lambda x: calls.append(len(x)) or _oracle(x)
  with bj.BanelRunner(two_rounds.lm, two_rounds.prior, counting, two_rounds.config,
                      **kwargs) as resumed:
    assert resumed.round == 1
    res = resumed.run()
  assert sum(calls) == M + two_rounds.config.n_eval  # round 2 only
  assert _without_wall_time(res.history) == _without_wall_time(
      runner_run.result.history)
  _assert_trees_equal(res.states, runner_run.result.states)


def _categorical_model(k=8):
  """A categorical over ``k`` values, logits ``kernel.sum(0)`` (a kernel the
  merged LoRA adapts)."""
  return bj.GenerativeModel(
      init=lambda key: {"w": {"kernel": 0.3 * jax.random.normal(key, (16, k))}},
      log_prob=lambda p, x: jax.nn.log_softmax(p["w"]["kernel"].sum(0))[x],
      sample=lambda p, key, n: jax.random.categorical(
          key, p["w"]["kernel"].sum(0), shape=(n,)).astype(jnp.int32),
      event_shape=(), dtype=jnp.int32)


def _sharded_main():
  """Run in a process with 4 CPU devices by
  :func:`test_runner_replicates_the_base_over_the_seed_mesh`; prints one JSON
  line. A merged LoRA of a categorical, 4 seeds: sharded over the devices,
  on one device, and sharded through the closure path."""
  import json
  base_model = _categorical_model()
  base = base_model.init(jax.random.key(0))
  lm = lora.lora_model(base_model, base, rank=1,
                       targets=lambda path, leaf: path[-1] == "kernel")
  prior = lm.model.init(jax.random.key(1))
  config = bj.BanelConfig(nre_budget=64, samples_per_round=32, failure_epochs=2,
                          failure_batch_size=16, distill_samples=64,
                          distill_batch_size=32, distill_epochs=1, n_eval=64)
  oracle = lambda x: (np.asarray(x) == 5).astype(np.float32)
  run = lambda model, shard: bj.BanelRunner(model, prior, oracle, config,
                                            seeds=(0, 1, 2, 3), progress=False,
                                            shard_seeds=shard)
  sharded, single, closure = run(lm, True), run(lm, False), run(lm.model, True)
  frozen = jax.tree.leaves(sharded._update.params)
  out = {"mesh": int(sharded.mesh.devices.size),
         "frozen_devices": sorted({len(x.sharding.device_set) for x in frozen}),
         "frozen_replicated": all(x.sharding.is_fully_replicated for x in frozen),
         "embedded": {name: _embedded_leaves(text, base)
                      for name, text in _lowered_texts(sharded, 32).items()},
         "closure_embedded": {name: _embedded_leaves(text, base)
                              for name, text in _lowered_texts(closure, 32).items()}}
  results = {"sharded": sharded.run(), "single": single.run(), "closure": closure.run()}
  out["histories"] = {k: _without_wall_time(r.history) for k, r in results.items()}
  out["state_devices"] = sorted({len(x.sharding.device_set)
                                 for x in jax.tree.leaves(results["sharded"].states)})
  out["max_state_diff"] = max(
      float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))
      for x, y in zip(_leaves(results["sharded"].states),
                      _leaves(results["single"].states)))
  print(json.dumps(out))


def test_runner_replicates_the_base_over_the_seed_mesh(four_cpu_devices_env):
  import json
  import pathlib
  import subprocess
  import sys
  here = pathlib.Path(__file__).resolve().parent
  done = subprocess.run([sys.executable, "-c", "import test_lora; test_lora._sharded_main()"],
                        cwd=here, env=four_cpu_devices_env, check=True,
                        capture_output=True, text=True)
  r = json.loads(done.stdout.strip().splitlines()[-1])
  assert r["mesh"] == 4 and r["state_devices"] == [4]
  assert r["frozen_devices"] == [4] and r["frozen_replicated"]
  assert set(r["embedded"].values()) == {0}
  assert set(r["closure_embedded"].values()) == {1}  # the one kernel, as a constant
  h = r["histories"]
  assert len(h["sharded"]) == 3 and h["sharded"] == h["closure"]
  # one device runs the 4 seeds in one vmap, each of 4 devices a lone seed: the
  # same samples, float rounding apart (as without LoRA)
  for key in ("nre", "success_rate", "n_failures", "distinct_share"):
    assert [x.get(key) for x in h["sharded"]] == [x.get(key) for x in h["single"]]
  assert r["max_state_diff"] < 1e-5


def test_frozen_hook_is_read_from_wrappers_only(tiny):
  from banel_jax.runtime import frozen
  lm = lora.lora_model(tiny.gen.model, tiny.base, rank=2)
  model, hook = frozen.split_frozen(lm)
  assert model is lm.model and hook.params is tiny.base and hook.bind is lm.with_base
  assert frozen.split_frozen(tiny.gen.model) == (tiny.gen.model, None)
  with pytest.raises(ValueError, match="no frozen-params wrapper"):
    frozen.split_frozen(types.SimpleNamespace(model=lm.model, frozen=tiny.base))
