"""``banel reason`` (banel_jax.experiments.reason): the questions file, the text
oracle, the checkpoint checks, and a smoke run on a tiny random Llama."""

import collections
import json
import pathlib

import numpy as np
import pytest

from banel_jax import cli
from banel_jax.core.metrics import clopper_pearson
from banel_jax.experiments import common, reason, registry
from banel_jax.runtime.ledger import LEDGER_FILE, read_ledger
from banel_jax.tasks import word_problems as wp

ExperimentError = registry.ExperimentError


def _write(path: pathlib.Path, lines) -> pathlib.Path:
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n"
                          for l in lines))
  return path


# ---------------------------------------------------------------------------
# The questions file.


def test_questions_parse_with_template_prompt_and_measured_rate(tmp_path):
  f = _write(tmp_path / "q.jsonl", [
      {"question": "Ann has 3 pens. How many?", "answer": 3},
      "",
      {"id": "b", "question": "Q2", "answer": "1,234", "prompt": "P: Q2 =",
       "successes": 3, "samples": 1000, "rate": 0.003},
      {"id": 7, "question": "Q3", "answer": -2.5}])
  qs = reason.load_questions(f, template="Q: {question}\nA:")
  assert [q.id for q in qs] == ["1", "b", "7"]
  assert [q.line for q in qs] == [1, 3, 4]
  assert qs[0].prompt == "Q: Ann has 3 pens. How many?\nA:"
  assert qs[1].prompt == "P: Q2 =" and qs[1].answer == "1,234"
  assert qs[1].measured == {"successes": 3, "samples": 1000, "rate": 0.003}
  assert qs[0].measured is None and qs[2].answer == -2.5


@pytest.mark.parametrize("line, message", [
    ("{not json", "q.jsonl line 2: not valid JSON"),
    ("[1, 2]", "q.jsonl line 2: expected a JSON object"),
    ({"question": "Q"}, "q.jsonl line 2: missing field 'answer'"),
    ({"question": "", "answer": 1}, "line 2: 'question' must be a non-empty string"),
    ({"question": "Q", "answer": "seven"}, "line 2: 'answer' must be a number"),
    ({"question": "Q", "answer": True}, "line 2: 'answer' must be a number"),
    ({"question": "Q", "answer": 1, "id": "a b"}, "line 2: 'id' must be letters"),
    ({"question": "Q", "answer": 1, "id": "a"}, "line 2: id 'a' is already the id "
     "of line 1"),
    ({"question": "Q", "answer": 1, "prompt": ""}, "line 2: 'prompt' must be"),
    ({"question": "Q", "answer": 1, "samples": 10}, "line 2: a measured rate needs"),
    ({"question": "Q", "answer": 1, "successes": 5, "samples": 4},
     "line 2: a measured rate needs"),
    ({"question": "Q", "answer": 1, "successes": 1, "samples": 4, "rate": 0.5},
     "line 2: 'rate'=0.5 is not successes / samples = 1/4"),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
  f = _write(tmp_path / "q.jsonl", [{"id": "a", "question": "Q", "answer": 1}, line])
  with pytest.raises(ExperimentError) as e:
    reason.load_questions(f)
  assert message in str(e.value)


def test_missing_and_empty_questions_files(tmp_path):
  with pytest.raises(ExperimentError, match="questions file .*nowhere.jsonl.* does "
                     "not exist"):
    reason.load_questions(tmp_path / "nowhere.jsonl")
  with pytest.raises(ExperimentError, match="holds no question"):
    reason.load_questions(_write(tmp_path / "empty.jsonl", ["", "  "]))


def test_config_checks():
  with pytest.raises(ExperimentError, match="must contain {question}"):
    reason.ReasonConfig(prompt_template="no placeholder")
  with pytest.raises(ExperimentError, match=r"\['ppo'\] unknown"):
    reason.ReasonConfig(methods=("ppo",))
  with pytest.raises(ExperimentError, match="temperature"):
    reason.ReasonConfig(temperature=0.0)
  tuned = reason.lm_banel(defaults=True, learning_rate=1e-4)
  assert tuned.distill_prior_share == 0.5 and tuned.distill_reset
  assert tuned.failure_learning_rate == pytest.approx(3e-5)
  assert reason.lm_banel().filter_factor == 2.0  # the paper's


# ---------------------------------------------------------------------------
# The checkpoint directory.


def test_missing_model_dir_and_files_are_named(tmp_path, monkeypatch):
  out = tmp_path / "out"
  with pytest.raises(ExperimentError, match="'nowhere' lacks the directory itself"):
    reason.resolve_model_dir(reason.ReasonConfig(model_dir="nowhere"), out)
  ck = tmp_path / "ck"
  ck.mkdir()
  (ck / "config.json").write_text("{}")
  with pytest.raises(ExperimentError, match="lacks model.safetensors, tokenizer.json"):
    reason.resolve_model_dir(reason.ReasonConfig(model_dir=str(ck)), out)
  with pytest.raises(ExperimentError, match="pass --model-dir DIR"):
    reason.resolve_model_dir(reason.gsm8k_config(), out)
  # The default preset reads the package's checkpoint: named when incomplete.
  monkeypatch.setattr(common, "ASSETS", tmp_path / "assets")
  with pytest.raises(ExperimentError, match=r"banel_jax/assets/reasoning\) is not "
                     r"complete: missing the directory itself"):
    reason.resolve_model_dir(reason.default_config(), out)
  (tmp_path / "assets" / "reasoning").mkdir(parents=True)
  with pytest.raises(ExperimentError, match="missing config.json, model.safetensors, "
                     "tokenizer.json, questions.jsonl"):
    reason.resolve_model_dir(reason.default_config(), out)


def test_the_command_line_fails_cleanly(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["reason", "--model-dir", str(tmp_path / "nowhere"), "--out",
              str(tmp_path / "o"), "--no-progress"])
  assert e.value.code == 1
  assert "lacks the directory itself" in capsys.readouterr().err
  config, preset, _, _ = cli.parse(registry.commands()["reason"], [
      "--model-dir", "m", "--questions", "q.jsonl", "--methods", "nsr", "rnd",
      "--seeds", "4", "5", "--nre-budget", "100", "--dtype", "bfloat16",
      "--nsr.learning-rate", "0.5"])
  assert preset == "default"
  assert config == reason.default_config().replace(
      model_dir="m", questions="q.jsonl", methods=("nsr", "rnd"), seeds=(4, 5),
      nre_budget=100, dtype="bfloat16",
      nsr=reason.default_config().nsr.replace(learning_rate=0.5))


# ---------------------------------------------------------------------------
# The text oracle.


@pytest.fixture(scope="module")
def tokenizer():
  return wp.build_tokenizer()


def _row(tokenizer, text, length=16, end=True):
  ids = tokenizer.encode(text, add_special_tokens=False).ids
  ids += [wp.EOS_ID] if end else []
  assert len(ids) <= length
  return ids + [wp.PAD_ID] * (length - len(ids))


def test_text_oracle_on_hand_made_token_ids(tokenizer):
  x = np.array([
      _row(tokenizer, "7+5=12. #### 12"),  # right
      _row(tokenizer, "7+5=12. #### 13"),  # wrong
      _row(tokenizer, "7+5=12. 12"),  # no marker
      _row(tokenizer, "#### 3", length=3) + _row(tokenizer, "#### 12", 13),
      _row(tokenizer, "So #### 12", end=False),  # no end token: every token counts
  ], np.int32)
  texts = reason.decode_completions(tokenizer, x, [wp.EOS_ID])
  assert texts == ["7+5=12. #### 12", "7+5=12. #### 13", "7+5=12. 12", "#### 3",
                   "So #### 12"]
  marked = reason.answer_oracle(tokenizer, 12, [wp.EOS_ID])
  np.testing.assert_array_equal(marked(x), [1, 0, 0, 0, 1])
  assert marked(x).dtype == np.float32
  loose = reason.answer_oracle(tokenizer, "12", [wp.EOS_ID], require_marker=False)
  np.testing.assert_array_equal(loose(x), [1, 0, 1, 0, 1])
  # Any verifier of text; with no end ids every row is decoded whole.
  seen = []
  oracle = reason.text_oracle(tokenizer, lambda t: seen.append(t) or "13" in t, [])
  np.testing.assert_array_equal(oracle(x[:2]), [0, 1])
  assert seen[0].startswith("7+5=12. #### 12")
  with pytest.raises(ValueError, match="not a number"):
    reason.answer_oracle(tokenizer, "twelve", [wp.EOS_ID])


def test_prompt_ids_are_the_word_problems_ones(tmp_path, tokenizer):
  """The package's questions read ``<bos>`` + question + newline: the template
  and BOS rule give the ids the task's own helper gives."""
  from banel_jax.models import hf
  ck = reason.write_tiny_checkpoint(tmp_path / "ck")
  cfg = hf.load_config(ck)
  (q,) = reason.load_questions(ck / "questions.jsonl")[:1]
  ids = reason.prompt_token_ids(tokenizer, cfg, q.prompt, add_bos=True)
  assert ids == wp.prompt_ids(tokenizer, q.question)
  assert reason.prompt_token_ids(tokenizer, cfg, q.prompt, add_bos=False) == ids[1:]
  assert cfg.eos_token_ids == (wp.EOS_ID,) and cfg.pad_token_id == wp.PAD_ID


def test_rnd_features_are_fixed_per_token():
  import jax.numpy as jnp
  f = reason.token_embedding_features(3)
  x = jnp.array([[5, 6, 5], [6, 6, 2]])
  feats = np.asarray(f(x))
  assert feats.shape == (2, 9)
  np.testing.assert_array_equal(feats[0, :3], feats[0, 6:])  # token 5 twice
  np.testing.assert_array_equal(feats[0, 3:6], feats[1, :3])  # token 6
  assert not np.allclose(feats[0, :3], feats[0, 3:6])
  np.testing.assert_array_equal(np.asarray(reason.token_embedding_features(3)(x)),
                                feats)


def test_no_pretrained_hit_divides_by_the_upper_bound():
  q = reason.Question("a", "Q", 1, "Q\n", {"successes": 0, "samples": 5000,
                                           "rate": 0.0}, 1)
  setup = reason.QuestionSetup(q, [1], None, None)
  rate = reason.pretrained_rate(reason.ReasonConfig(pretrained_samples=5000), setup,
                                None, {}, None)
  assert rate["rate_is_upper_bound"] and rate["source"] == "questions_file"
  assert rate["rate"] == pytest.approx(clopper_pearson(0, 5000).high)
  assert rate["sampled_rate"] == 0.0 and rate["hits"] == 0


# ---------------------------------------------------------------------------
# A smoke run.

BUDGET = 40


@pytest.mark.slow
def test_tiny_run_writes_the_canonical_summary_and_resumes(tmp_path, capsys):
  # NSR's run through the same runner is tests/test_nsr.py's (each method
  # compiles per question: two methods keep this test short)
  ck = reason.write_tiny_checkpoint(tmp_path / "ck")
  # The second question carries a measured rate on as many samples as asked.
  lines = [json.loads(l) for l in (ck / "questions.jsonl").read_text().splitlines()]
  lines[1].update(successes=9, samples=300)
  questions = _write(tmp_path / "questions.jsonl", lines)
  config = reason.tiny_config().replace(
      model_dir=str(ck), questions=str(questions), question_ids=(),
      methods=("banel_paper", "rnd"), seeds=(0, 1), nre_budget=BUDGET,
      samples_per_round=20, n_eval=20, max_new_tokens=4, final_eval_samples=100,
      pretrained_samples=300, sample_chunk=100)
  out = tmp_path / "out"
  reason.run(config, out, progress=False)
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) >= {"name", "command", "machine", "wall_time_s", "tasks"}
  assert list(summary["tasks"]) == ["reasoning_pens", "reasoning_coins"]
  pens, coins = summary["tasks"].values()
  assert pens["pretrained_source"] == "measured" and pens["pretrained_samples"] == 300
  assert coins["pretrained_source"] == "questions_file"
  assert (coins["pretrained_hits"], coins["pretrained_rate"]) == (9, 0.03)
  for task in (pens, coins):
    assert task["nre_budget"] == BUDGET and task["pretrained_rate"] > 0
    assert list(task["methods"]) == ["banel_paper", "rnd"]
    for method, e in task["methods"].items():
      assert e["label"] == reason.LABELS[method]
      assert e["uses_successes"] is False and e["task_knowledge"] is False
      assert e["seeds"] == [0, 1]
      for key in ("final_rate", "best_rate", "improvement_final", "improvement_best"):
        assert len(e[key]) == 2, key
      np.testing.assert_allclose(e["improvement_final"],
                                 np.array(e["final_rate"]) / task["pretrained_rate"])
      assert [f["trials"] for f in e["final_eval"]] == [100, 100]
      assert e["nre_spent"] == [BUDGET, BUDGET]
  # Every paid-for evaluation is in the ledgers: the budget per seed, no more.
  for qid in ("pens", "coins"):
    for method in ("banel_paper", "rnd"):
      ledger = out / "runs" / qid / method / LEDGER_FILE
      spent = collections.Counter(r["seed"] for r in read_ledger(ledger)
                                  if r["kind"] == "train")
      assert spent == {0: BUDGET, 1: BUDGET}, (qid, method)
  for name in ("table.md", "README.md", "success_vs_nre.png", "reason.json"):
    assert (out / name).is_file(), name
  readme = (out / "README.md").read_text()
  assert "| pens |" in readme and "success_vs_nre.png" in readme
  assert str(tmp_path) not in (out / "table.md").read_text()
  # A rerun loads every finished run instead of running it again.
  capsys.readouterr()
  reason.run(config, out, progress=False)
  assert capsys.readouterr().out.count("; loaded)") == 4
  assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"]


@pytest.mark.slow
def test_lora_rank_trains_adapters_of_the_banel_methods(tmp_path):
  with pytest.raises(ExperimentError, match="lora_rank=-1"):
    reason.ReasonConfig(lora_rank=-1)
  assert reason.gsm8k_config().lora_rank == 8
  ck = reason.write_tiny_checkpoint(tmp_path / "ck")
  config = reason.tiny_config().replace(
      model_dir=str(ck), methods=("banel_paper",), seeds=(0, 1), lora_rank=2,
      nre_budget=20, samples_per_round=20, n_eval=20, max_new_tokens=4,
      final_eval_samples=100, pretrained_samples=300, sample_chunk=100)
  out = tmp_path / "out"
  reason.run(config, out, progress=False)
  run_dir = out / "runs" / "pens" / "banel_paper"
  recorded = json.loads((run_dir / "config.json").read_text())
  assert recorded["extra"]["study"]["lora_rank"] == 2
  spent = collections.Counter(r["seed"] for r in read_ledger(run_dir / LEDGER_FILE)
                              if r["kind"] == "train")
  assert spent == {0: 20, 1: 20}
  e = json.loads((out / "summary.json").read_text())["tasks"]["reasoning_pens"][
      "methods"]["banel_paper"]
  assert [f["trials"] for f in e["final_eval"]] == [100, 100]
  # A too-large rank is named before anything is measured.
  with pytest.raises(ExperimentError, match="--lora-rank 4096 exceeds min"):
    reason.run(config.replace(lora_rank=4096), tmp_path / "big", progress=False)
  assert not (tmp_path / "big" / "runs").exists()
