"""``banel mnist`` (:mod:`banel_jax.experiments.mnist`): the tiny preset end to
end in process (summary.json in the canonical form, one pretrained rate for
every improvement, a rerun loads what finished), the equal-size grids, the
tuning protocol and the config checks."""

import json

import numpy as np
import pytest

from banel_jax.experiments import mnist
from banel_jax.experiments.registry import ExperimentError, commands

PER_SEED = ("final_rate", "best_rate", "improvement_final", "improvement_best")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny preset, run once for this file: ``(out, summary)``."""
  out = tmp_path_factory.mktemp("mnist_tiny")
  summary = mnist.run(mnist.tiny_config(), out, progress=False)
  return out, summary


def test_registered_with_presets_whose_defaults_run():
  command = commands()["mnist"]
  assert command.config_cls is mnist.MnistConfig
  assert command.default_preset == "default"
  assert set(command.presets) == {"default", "tiny"}
  config = mnist.default_config()
  assert config.seeds == (0, 1, 2, 3, 4)
  assert config.tuning_seeds == (100, 101, 102)
  assert config.methods == ("banel_paper", "rnd", "pseudo_counts")
  assert config.pretrained_samples >= 200_000
  assert config.final_eval_samples >= 200_000
  assert config.tuning_run.nre_budget < config.run.nre_budget


def test_tiny_run_writes_a_summary_of_the_canonical_form(tiny_run):
  out, summary = tiny_run
  assert json.loads((out / "summary.json").read_text()) == json.loads(
      json.dumps(summary))
  for key in ("name", "command", "machine", "wall_time_s", "tasks"):
    assert key in summary, key
  assert "CPU cores" in summary["machine"]
  assert set(summary["tasks"]) == {"mnist_0_to_6"}
  task = summary["tasks"]["mnist_0_to_6"]
  assert task["nre_budget"] == 32
  assert task["pretrained_samples"] == 4096
  assert task["pretrained_rate"] > 0
  assert list(task["methods"]) == ["banel_paper", "rnd", "pseudo_counts"]
  for method_id, row in task["methods"].items():
    assert row["label"] == mnist.LABELS[method_id]
    assert row["uses_successes"] is False and row["task_knowledge"] is False
    assert row["seeds"] == [0, 1] and len(set(row["seeds"])) == len(row["seeds"])
    for key in PER_SEED:
      assert len(row[key]) == len(row["seeds"]), (method_id, key)
      assert all(isinstance(v, float) and v >= 0 for v in row[key])
    assert row["final_rate_samples"] == 512
    assert row["nre_spent"] == [32, 32]
  assert task["methods"]["banel_paper"]["label"] == "BaNEL (paper)"
  for name in ("README.md", "table.md", "tuning.json", "pretrained.json",
               "success_vs_nre.png", "rounds_grid.png", "final_samples.png",
               "metrics_banel_paper.jsonl", "metrics_rnd.jsonl",
               "metrics_pseudo_counts.jsonl"):
    assert (out / name).exists(), name
  records = [json.loads(line) for line in
             (out / "metrics_banel_paper.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records] == [0, 1, 2]
  grid = mnist.unpack_samples(records[-1]["grid_samples"][0])
  assert grid.shape == (4, 196) and set(np.unique(grid)) <= {0, 1}
  readme = (out / "README.md").read_text()
  assert summary["command"] in readme and "CPU cores" in readme
  assert mnist.OBSERVATIONS_START in readme


def test_every_improvement_divides_by_the_one_pretrained_rate(tiny_run):
  out, summary = tiny_run
  task = summary["tasks"]["mnist_0_to_6"]
  rate0 = task["pretrained_rate"]
  measured = json.loads((out / "pretrained.json").read_text())
  assert measured["rate_used"] == rate0
  assert measured["estimate"]["trials"] == task["pretrained_samples"]
  # measured once: a single record in the run directory
  assert len(list(out.glob("runs/**/pretrained.json"))) == 1
  for row in task["methods"].values():
    for rate, imp in zip(row["final_rate"] + row["best_rate"],
                         row["improvement_final"] + row["improvement_best"]):
      assert imp == pytest.approx(rate / rate0)


def test_the_tuning_record_holds_every_point_and_the_picks(tiny_run):
  out, summary = tiny_run
  tuning = json.loads((out / "tuning.json").read_text())
  assert tuning["seeds"] == [100, 101]
  sizes = {m: len(rec["points"]) for m, rec in tuning["methods"].items()}
  assert sizes == {"banel_paper": 1, "rnd": 1, "pseudo_counts": 1}
  for method, rec in tuning["methods"].items():
    assert rec["chosen"] in [p["point"] for p in rec["points"]]
    settings = summary["tasks"]["mnist_0_to_6"]["methods"][method]["settings"]
    if method == "banel_paper":
      assert settings["calibrated_reject_fraction"] == rec["chosen"]["reject_fraction"]
      assert settings["failure_learning_rate"] == rec["chosen"]["learning_rate"]
    else:
      assert settings == rec["chosen"]


def test_a_rerun_loads_what_finished(tiny_run, capsys):
  out, summary = tiny_run
  again = mnist.run(mnist.tiny_config(), out, progress=False)
  text = capsys.readouterr().out
  assert text.count("loaded)") == 6  # 3 grid points and 3 reported runs
  assert again["tasks"] == json.loads(json.dumps(summary["tasks"]))


def test_the_default_grids_are_the_same_size_for_every_method():
  grid = mnist.TuningGrid()
  points = {m: grid.points(m) for m in mnist.METHODS}
  assert {m: len(p) for m, p in points.items()} == {m: 4 for m in mnist.METHODS}
  base = mnist.default_config()
  for method, pts in points.items():
    settings = [mnist.method_settings(mnist.apply_point(base, method, p), method)
                for p in pts]
    # every point is a distinct setting the method reads
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == 4


def test_tuning_runs_on_the_tuning_seeds_and_budget_and_picks_the_best(
    monkeypatch, tmp_path):
  config = mnist.default_config().replace(methods=("rnd",))
  calls = []

  def fake_run_method(method, task, point_config, run, seeds, run_dir, progress,
                      final_eval_samples):
    calls.append((seeds, run, final_eval_samples, run_dir))
    lr = point_config.rnd.learning_rate
    bw = point_config.rnd.bonus_weight
    rate = 1e-3 if (lr, bw) == (1e-3, 1.0) else 1e-4
    return {"final_success_rate": [rate] * len(seeds), "wall_time_s": 1.0,
            "history": [{"round": 10, "success_rate": [rate] * len(seeds)}]}

  monkeypatch.setattr(mnist, "run_method", fake_run_method)
  chosen, record = mnist.tune(None, config, tmp_path, progress=False)
  assert len(calls) == 4
  for seeds, run, final_eval_samples, _ in calls:
    assert seeds == (100, 101, 102) and final_eval_samples == 0
    assert run.nre_budget == config.tuning_nre_budget
    assert run.n_eval == config.tuning_n_eval
  assert [c[3].name for c in calls] == ["rnd_0", "rnd_1", "rnd_2", "rnd_3"]
  assert record["methods"]["rnd"]["chosen"] == {"bonus_weight": 1.0,
                                                "learning_rate": 1e-3}
  assert chosen.rnd.learning_rate == 1e-3 and chosen.rnd.bonus_weight == 1.0
  assert chosen.seeds == config.seeds and chosen.run == config.run


@pytest.mark.parametrize("changes, message", [
    (dict(seeds=(0, 100)), "seeds \\[100\\] are both reported seeds and tuning"),
    (dict(methods=("banel",)), "MnistConfig.methods: \\['banel'\\] are not methods"),
    (dict(seeds=(1, 1)), "MnistConfig.seeds=\\(1, 1\\) names a seed twice"),
    (dict(pretrained_samples=0), "MnistConfig.pretrained_samples=0"),
    (dict(grid_samples=20_000), "MnistConfig.grid_samples=20000 must be <="),
])
def test_bad_configs_are_refused_naming_the_field(changes, message):
  with pytest.raises(ExperimentError, match=message):
    mnist.default_config().replace(**changes)


def test_bad_grids_are_refused_naming_the_field():
  with pytest.raises(ExperimentError, match="TuningGrid.rnd_learning_rate=\\(\\)"):
    mnist.TuningGrid(rnd_learning_rate=())


def test_banel_run_fields_are_set_by_run_only():
  preset = mnist.default_config()
  changed = preset.replace(banel=preset.banel.replace(nre_budget=100))
  with pytest.raises(ExperimentError, match="--banel.nre-budget"):
    mnist.check_against_preset(changed, preset)
  mnist.check_against_preset(preset.replace(seeds=(7,)), preset)


def test_samples_pack_and_unpack():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, (5, 196))
  assert np.array_equal(mnist.unpack_samples(mnist.pack_samples(x)), x)
  with pytest.raises(ValueError, match="zeros and ones"):
    mnist.pack_samples(np.full((1, 4), 2))


def test_bootstrap_interval_brackets_the_mean():
  lo, hi = mnist.bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0, 10.0])
  assert lo <= 4.0 <= hi and lo >= 1.0 and hi <= 10.0
