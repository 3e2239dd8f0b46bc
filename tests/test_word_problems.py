"""Tests of banel_jax.tasks.word_problems and its pretraining module."""

import fractions
import json

import jax
import numpy as np
import pytest

from banel_jax.core.metrics import clopper_pearson
from banel_jax.models import hf
from banel_jax.tasks import word_problems as wp
from banel_jax.tasks import word_problems_pretrain as wpp

TINY_ARCH = wpp.Architecture(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=128)
TINY = wpp.PretrainSettings(steps=3, tokens_per_batch=256, warmup_steps=1,
                            step_weights=(1.0, 0.0, 0.0, 0.0),
                            architecture=TINY_ARCH)
CONFIGS = [wp.ProblemConfig(), wp.ProblemConfig(min_steps=1, max_steps=2, ops=("+",)),
           *wpp.HARD_CONFIGS.values(), *(c for _, c in wpp.PretrainSettings().mixture)]


# ----------------------------------------------------------------------------
# Generator.


def test_generator_is_deterministic():
  a = wp.generate_problems(3, 50)
  assert a == wp.generate_problems(np.random.default_rng(3), 50)
  assert a != wp.generate_problems(4, 50)
  assert len({p.question for p in a}) > 45


def _replay(p: wp.Problem) -> list[int]:
  values = [p.numbers[0]]
  for op, n in zip(p.ops, p.numbers[1:]):
    v = values[-1]
    if op == "/":
      assert v % n == 0
    values.append({"+": v + n, "-": v - n, "*": v * n, "/": v // n}[op])
  return values


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.max_steps}-{c.max_value}")
def test_problems_are_right(config):
  problems = wp.generate_problems(0, 300, config)
  assert {p.steps for p in problems} == set(range(config.min_steps,
                                                  config.max_steps + 1))
  for p in problems:
    values = _replay(p)
    assert p.answer == values[-1] and p.steps == len(p.ops) == len(p.numbers) - 1
    assert all(1 <= v <= config.max_value for v in values)
    assert set(p.ops) <= set(config.ops)
    assert wp.check_worked_solution(p.solution, p.answer)
    assert wp.is_correct(p.solution, p.answer)
    assert wp.is_correct(p.solution + "\n", str(p.answer))
    assert not wp.is_correct(p.solution, p.answer + 1)
    assert p.solution.endswith(f"#### {p.answer}")
    assert str(p.numbers[0]) in p.question and p.question.endswith("?")


def test_problem_text():
  p = wp.generate_problem(np.random.default_rng(0),
                          wp.ProblemConfig(min_steps=2, max_steps=2, ops=("+",)))
  a, b, c = p.numbers
  assert p.solution == f"{a}+{b}={a + b}. {a + b}+{c}={a + b + c}. #### {a + b + c}"
  assert p.question.count(".") == 3 and p.question.startswith(p.question.split()[0])


def test_held_out_split():
  held = wp.generate_problems(0, 40, held_out=True)
  kept = wp.generate_problems(0, 400, held_out=False)
  assert all(wp.is_held_out(p.question) for p in held)
  assert not any(wp.is_held_out(p.question) for p in kept)
  frac = np.mean([wp.is_held_out(p.question) for p in wp.generate_problems(1, 3200)])
  assert abs(frac - 1 / wp.HELD_OUT_MODULUS) < 0.02
  # pretraining batches never hold a held-out question
  for step in range(3):
    assert not any(wp.is_held_out(p.question)
                   for p in wpp.batch_problems(wpp.PretrainSettings(), step))


def test_config_validation():
  for bad in ({"min_steps": 0}, {"min_steps": 3, "max_steps": 2}, {"ops": ("^",)},
              {"ops": ()}, {"ops": ("+", "+")}, {"start_range": (0, 5)},
              {"add_range": (5, 2)}, {"mul_range": (1, 3)},
              {"start_range": (2, 300), "max_value": 200}):
    with pytest.raises(ValueError):
      wp.ProblemConfig(**bad)
  c = wp.ProblemConfig(max_value=50, ops=("*", "-"))
  assert wp.ProblemConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
  with pytest.raises(ValueError, match="no operation"):
    wp.generate_problem(np.random.default_rng(0),
                        wp.ProblemConfig(ops=("*",), start_range=(150, 200)))
  with pytest.raises(ValueError, match="non-negative"):
    wp.generate_problems(0, -1)


# ----------------------------------------------------------------------------
# Answer extraction and grading.

F = fractions.Fraction


@pytest.mark.parametrize("text, lenient, strict", [
    ("7+5=12. 12-3=9. #### 9", 9, 9),
    ("#### 1,234", 1234, 1234),
    ("#### 1,234.", 1234, 1234),
    ("The answer is 42.", 42, None),
    ("so THE ANSWER IS: $1,000,000.", 1000000, None),
    ("the answer is -5", -5, None),
    ("-5", -5, None),
    ("3.0", 3, None),
    ("It costs 2.50 dollars.", F(5, 2), None),
    ("12-3=9", 9, None),  # 12-3: the numbers 12 and 3, no negative
    ("12x3", 3, None),
    ("=\u22127", -7, None),  # unicode minus
    ("#### -12", -12, -12),
    ("####7 apples", 7, 7),
    ("#### 9 #### 10", 10, 10),  # the last marker counts
    ("#### 1,2345", 1, 1),  # a comma must group exactly three digits
    ("#### none; 5 earlier", 5, 5),  # the first number after the marker
    ("5 #### ", None, None),  # a marker without a number: no answer
    ("The answer is unknown.", None, None),
    ("no numbers here", None, None),
    ("", None, None),
])
def test_extract_answer(text, lenient, strict):
  got = wp.extract_answer(text)
  assert got == (None if lenient is None else F(lenient))
  assert isinstance(got, (F, type(None)))
  got = wp.extract_answer(text, require_marker=True)
  assert got == (None if strict is None else F(strict))


def test_is_correct_and_parse_number():
  assert wp.is_correct("#### 3.0", 3) and wp.is_correct("#### 3", 3.0)
  assert wp.is_correct("#### 1,234", "1234") and wp.is_correct("#### 0.5", F(1, 2))
  assert not wp.is_correct("The answer is 3.", 3)  # strict by default
  assert wp.is_correct("The answer is 3.", 3, require_marker=False)
  assert not wp.is_correct("#### 3.01", 3) and not wp.is_correct("####", 0)
  assert wp.parse_number(" -1,234.5 ") == F(-2469, 2)
  for bad in ("12a", "1 2", "", "--3"):
    with pytest.raises(ValueError, match="not a number"):
      wp.parse_number(bad)
  for bad in (True, float("nan"), None):
    with pytest.raises(ValueError, match="answer must be"):
      wp.is_correct("#### 1", bad)


def test_check_worked_solution():
  assert wp.check_worked_solution("7+5=12. 12-3=9. #### 9", 9)
  assert wp.check_worked_solution("8/2=4. 4*3=12. #### 12")
  assert not wp.check_worked_solution("7+5=12. 12-3=9. #### 9", 8)
  assert not wp.check_worked_solution("7+5=13. 13-3=10. #### 10")  # wrong sum
  assert not wp.check_worked_solution("7+5=12. 11-3=8. #### 8")  # broken chain
  assert not wp.check_worked_solution("9/2=4. #### 4")  # inexact division
  assert not wp.check_worked_solution("7+5=12. #### 11")
  assert not wp.check_worked_solution("7+5=12.")
  assert not wp.check_worked_solution("#### 12")


# ----------------------------------------------------------------------------
# Tokenizer.


def test_tokenizer_round_trip(tmp_path):
  tok = wp.build_tokenizer()
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = hf.load_tokenizer(tmp_path)
  problems = wp.generate_problems(5, 20, wpp.HARD_CONFIGS["big5"])
  texts = [wp.prompt_text(p.question) + p.solution for p in problems]
  texts += ["The answer is 42.", "Annabel has 3 pens!", "x~y\n", "#### 1,234", ""]
  for text in texts:
    ids = loaded.encode(text, add_special_tokens=False).ids
    assert ids == tok.encode(text, add_special_tokens=False).ids
    assert wp.UNK_ID not in ids and loaded.decode(ids) == text
  assert loaded.get_vocab_size() == len(wp.tokenizer_vocab())
  for i, t in enumerate(wp.SPECIAL_TOKENS):
    assert loaded.token_to_id(t) == i
  # whole words and space-digits are single tokens; unknown words fall back
  pieces = loaded.encode("Ann has 12 pens.", add_special_tokens=False).tokens
  assert pieces == ["Ann", " has", " 1", "2", " pens", "."]
  assert loaded.encode("Annabel", add_special_tokens=False).tokens == list("Annabel")
  for odd in ("caf\u00e9", "a\tb"):  # outside newline and printable ASCII
    assert wp.UNK_ID in loaded.encode(odd, add_special_tokens=False).ids


def test_prompt_completion_and_scoring():
  tok = wp.build_tokenizer()
  problems = wp.generate_problems(2, 8)
  prompt = wp.prompt_ids(tok, problems[0].question)
  assert prompt[0] == wp.BOS_ID and tok.decode(prompt[1:]) == problems[0].question + "\n"
  comps = [wp.completion_ids(tok, p.solution) for p in problems]
  assert all(c[-1] == wp.EOS_ID for c in comps)
  width = max(map(len, comps)) + 3
  x = np.full((len(comps), width), wp.PAD_ID, np.int32)
  for i, c in enumerate(comps):
    x[i, :len(c)] = c
  assert wp.decode_completions(tok, x) == [p.solution for p in problems]
  assert wp.score_completions(tok, x, problems[0].answer)[0]
  # a row without <eos> is graded on all its tokens; tokens after <eos> are not
  y = x.copy()
  y[0, len(comps[0]) - 1:] = tok.token_to_id("7")
  assert wp.decode_completions(tok, y[:1])[0].startswith(problems[0].solution)
  z = x.copy()
  z[:, -1] = tok.token_to_id("7")
  assert wp.score_completions(tok, z, problems[0].answer)[0]


# ----------------------------------------------------------------------------
# Checkpoint format and pretraining.


def test_checkpoint_round_trip(tmp_path):
  tok = wp.build_tokenizer()
  config = wpp.decoder_config(TINY_ARCH, tok.get_vocab_size())
  decoder = hf.make_decoder(config)
  params = decoder.init(jax.random.key(0))
  wpp.save_checkpoint(tmp_path, TINY_ARCH, params, tok, {"note": 1})
  decoder2, params2, tok2 = wp.load_model(tmp_path)
  assert decoder2.config == config
  assert jax.tree.all(jax.tree.map(np.array_equal, params, params2))
  assert tok2.get_vocab() == tok.get_vocab()
  assert json.loads((tmp_path / "training.json").read_text()) == {"note": 1}


def test_pretraining_is_reproducible_and_resumes(tmp_path):
  # three tiny trainings of one batch shape: one compilation (about 5 s)
  a, info = wpp.train(TINY, log=None)
  assert len(info["losses"]) == 3 and np.isfinite(info["losses"]).all()
  wpp.train(TINY, work_dir=tmp_path, log=None, stop_at=2)  # a cut-off run
  c, info_c = wpp.train(TINY, work_dir=tmp_path, log=None)
  assert info_c["resumed_from"] == 2 and info_c["losses"] == info["losses"]
  assert jax.tree.all(jax.tree.map(np.array_equal, a, c))  # bit for bit
  with pytest.raises(ValueError, match="other settings"):
    wpp.train(TINY.replace(seed=1), work_dir=tmp_path, log=None)


def test_batches():
  tok = wp.build_tokenizer()
  settings = wpp.PretrainSettings()
  for step in range(6):
    x, mask = wpp.make_batch(settings, tok, step)
    assert np.array_equal(x, wpp.make_batch(settings, tok, step)[0])
    assert x.shape[0] * x.shape[1] <= settings.tokens_per_batch
    assert x.shape[1] in settings.lengths and mask.any(1).all()
    assert (x[:, 0] == wp.BOS_ID).all() and (x[:, 1:][mask] != wp.PAD_ID).all()
    # the loss covers exactly the completion: its tokens and <eos>
    assert ((x[:, 1:] == wp.EOS_ID) <= mask).all()
    assert mask.sum() == sum(len(wp.completion_ids(tok, p.solution))
                             for p in wpp.batch_problems(settings, step))
  assert TINY == wpp.PretrainSettings.from_dict(json.loads(json.dumps(TINY.to_dict())))


def test_settings_validation():
  with pytest.raises(ValueError, match="one entry per step"):
    wpp.PretrainSettings(step_weights=(1.0,))
  with pytest.raises(ValueError, match="max_positions"):
    wpp.PretrainSettings(lengths=(48, 64, 88, 300))
  with pytest.raises(ValueError, match="holds no row"):
    wpp.PretrainSettings(tokens_per_batch=100)


def test_help():
  with pytest.raises(SystemExit) as e:
    wpp.main(["--help"])
  assert e.value.code == 0


# ----------------------------------------------------------------------------
# Shipped assets.


def test_shipped_checkpoint():
  config = hf.load_config(wp.ASSET_DIR)
  decoder, params, tok = wp.load_model()
  assert config.model_type == "llama" and config.vocab_size == tok.get_vocab_size()
  assert hf.param_count(params) <= 5_000_000
  assert tok.get_vocab() == wp.build_tokenizer().get_vocab()
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (
      wp.BOS_ID, (wp.EOS_ID,), wp.PAD_ID)
  record = json.loads((wp.ASSET_DIR / "training.json").read_text())
  settings = wpp.PretrainSettings.from_dict(record["settings"])
  assert record["parameters"] == hf.param_count(params)
  assert decoder.config == wpp.decoder_config(settings.architecture,
                                              tok.get_vocab_size())
  size = sum(f.stat().st_size for f in wp.ASSET_DIR.iterdir())
  assert size < 8_000_000


def test_shipped_model_solves_easy_problems():
  decoder, params, tok = wp.load_model()
  problems = wp.generate_problems(11, 64, wp.ProblemConfig(max_steps=2),
                                  held_out=True)
  log_p, greedy = wpp.reference_scores(decoder, params, tok, problems)
  assert greedy.mean() > 0.5 and np.exp(log_p).mean() > 0.3


def test_shipped_questions():
  questions = wp.load_questions()
  assert len(questions) >= 4
  assert len({q["id"] for q in questions}) == len(questions)
  assert len({q["question"] for q in questions}) == len(questions)
  tok = wp.build_tokenizer()
  for q in questions:
    assert q["prompt"] == wp.prompt_text(q["question"])
    assert wp.is_held_out(q["question"])  # never in pretraining
    assert wp.check_worked_solution(q["reference_solution"], q["answer"])
    assert q["steps"] == len(wp._EQUATION.findall(q["reference_solution"]))
    assert q["prompt_tokens"] == len(wp.prompt_ids(tok, q["question"]))
    assert len(wp.completion_ids(tok, q["reference_solution"])) <= q["max_new_tokens"]
    assert q["samples"] >= 20_000 and 0 <= q["successes"] <= q["samples"]
    assert q["rate"] == q["successes"] / q["samples"]
    assert wpp.RATE_RANGE[0] <= q["rate"] <= wpp.RATE_RANGE[1]
    assert wpp.KEEP_RANGE[0] <= q["rate"] <= wpp.KEEP_RANGE[1]
    ci = clopper_pearson(q["successes"], q["samples"])
    assert np.allclose(q["interval"], [ci.low, ci.high])
    # the pooled counts are the selecting and the confirming measurements
    sel, conf = q["selection"], q["confirmation"]
    assert sel["samples"] >= 20_000 and conf["samples"] >= 20_000
    assert wpp.RATE_RANGE[0] <= sel["rate"] <= wpp.RATE_RANGE[1]
    for key in ("successes", "samples", "chain_correct"):
      assert q[key] == sel[key] + conf[key]
    assert 0 <= q["chain_correct"] <= q["successes"]
