"""``banel suite``: the runner, its robustness figures and its files."""

import json

import numpy as np
import pytest

from banel_jax import BanelConfig
from banel_jax.experiments import suite
from banel_jax.experiments.registry import ExperimentError


def test_robustness_figures_count_collapse_and_tenfold_seeds():
  r = suite.robustness([0.5, 1.0, 2.0, 10.0, 40.0])
  assert r["median"] == 2.0
  assert r["collapse_share"] == pytest.approx(0.2)  # 0.5 only: 1.0 is not below
  assert r["share_10x"] == pytest.approx(0.4)
  assert r["mean"] == pytest.approx(np.mean([0.5, 1.0, 2.0, 10.0, 40.0]))
  lo, hi = r["median_ci95"]
  assert 0.5 <= lo <= 2.0 <= hi <= 40.0


def test_pooled_figures_keep_the_halves_apart():
  tasks = {"a": {"half": "tuning", "methods": {"m": {"improvement_final": [0.0, 4.0]}}},
           "b": {"half": "held_out", "methods": {"m": {"improvement_final": [20.0]}}}}
  pools = {h: suite.pooled(tasks, h, ["m"]) for h in ("tuning", "held_out")}
  assert pools["tuning"]["m"]["n"] == 2 and pools["tuning"]["m"]["collapse_share"] == 0.5
  assert pools["held_out"]["m"]["share_10x"] == 1.0


@pytest.mark.parametrize("changes, message", [
    ({"tasks": ("no_such_task",)}, "unknown"),
    ({"methods": ("banel_paper", "banel_paper")}, "twice"),
    ({"seeds": (0, 0)}, "twice"),
    ({"half": "both"}, "half"),
    ({"final_eval_samples": 0}, "final_eval_samples"),
])
def test_bad_settings_are_refused_by_name(changes, message):
  with pytest.raises(ExperimentError, match=message):
    suite.SuiteConfig(**changes)


def test_a_small_suite_writes_the_canonical_summary_and_resumes(tmp_path, capsys):
  from banel_jax.suite import TASKS
  name = next(iter(TASKS))
  config = suite.SuiteConfig(tasks=(name,), methods=("banel_paper", "rnd"),
                             seeds=(0, 1), n_eval=500, eval_every=2,
                             final_eval_samples=1_000)
  suite.run(config, tmp_path / "out", progress=False)
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  task = summary["tasks"][name]
  assert task["half"] == TASKS[name].half and task["pretrained_rate"] > 0
  for method in ("banel_paper", "rnd"):
    entry = task["methods"][method]
    assert entry["seeds"] == [0, 1]
    assert len(entry["final_rate"]) == len(entry["improvement_final"]) == 2
    assert entry["improvement_final"] == pytest.approx(
        [r / task["pretrained_rate"] for r in entry["final_rate"]])
    assert entry["uses_successes"] is False and entry["task_knowledge"] is False
  for f in ("table.md", "suite.json", "success_vs_nre.png", "README.md"):
    assert (tmp_path / "out" / f).exists()
  # a rerun loads every finished pair instead of paying for it again
  capsys.readouterr()
  suite.run(config, tmp_path / "out", progress=False)
  assert capsys.readouterr().out.count("; loaded)") == 2


def test_a_stopped_pair_counts_zero_on_every_seed():
  from banel_jax.core.posterior import AcceptanceRateError
  res = suite.stopped_record(AcceptanceRateError("no acceptance left"), 3)
  entry = suite.method_entry("banel_paper", res, (0, 1, 2), 1e-3)
  assert entry["improvement_final"] == [0.0, 0.0, 0.0]
  assert entry["robustness_final"]["collapse_share"] == 1.0
  assert "AcceptanceRateError" in res["stopped"]


def test_the_defaults_are_the_committed_tuning_pick():
  """``BanelConfig()`` (the suite's ``banel_default``) is the grid point that
  ``--tune`` picked on the tuning half, as committed in
  results/suite/tuning.json."""
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "results" / "suite" / "tuning.json"
  record = json.loads(path.read_text())
  assert record["chosen_changes"] == suite.TUNED
  assert record["points"][record["chosen"]]["changes"] == suite.TUNED
  assert BanelConfig() == BanelConfig.paper(**suite.TUNED)
  assert suite.SuiteConfig().banel_default == BanelConfig()
  assert set(record["tasks"]) == {n for n, t in __import__(
      "banel_jax.suite", fromlist=["TASKS"]).TASKS.items() if t.half == "tuning"}
  assert all(s >= 100 for s in record["seeds"])  # never the reported seeds
