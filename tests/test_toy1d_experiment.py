"""The ``toy1d`` experiment in both modes, at a small size, and resumed."""

import json

import pytest

from banel_jax.experiments import toy1d
from banel_jax.experiments.registry import ExperimentError


def _same(a, b) -> bool:
  """Equal as JSON (NaN metrics, e.g. exact mode's distillation, included)."""
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _small() -> toy1d.Toy1DConfig:
  tiny = toy1d.tiny_config()
  return tiny.replace(banel=tiny.banel.replace(nre_budget=200, n_eval=500,
                                               failure_epochs=10))


def test_both_modes_write_their_records_and_figures(tmp_path):
  result = toy1d.run(_small(), tmp_path, progress=False)
  assert set(result["modes"]) == {"distilled", "exact"}
  assert result["prior_success_rate_exact"] == pytest.approx(0.0108, abs=1e-3)
  for mode, summary in result["modes"].items():
    assert _same(summary, json.loads((tmp_path / f"toy1d_{mode}.json").read_text()))
    assert summary["mode"] == mode and summary["config"]["mode"] == mode
    assert summary["nre_spent"] == [200, 200] and summary["seeds"] == [0, 1]
    assert len(summary["final_success_rate_exact"]) == 2
    assert (tmp_path / f"toy1d_rounds_{mode}.png").exists()
    lines = (tmp_path / f"metrics_{mode}.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]
  assert (tmp_path / "toy1d_success_vs_nre.png").exists()


def test_a_run_directory_resumes_the_finished_run(tmp_path):
  config = _small().replace(mode="exact", run_dir=str(tmp_path / "run"))
  first = toy1d.run(config, tmp_path / "a", progress=False)["modes"]["exact"]
  again = toy1d.run(config, tmp_path / "b", progress=False)["modes"]["exact"]
  assert (tmp_path / "run" / "exact" / "config.json").exists()
  assert again["final_success_rate"] == first["final_success_rate"]
  assert _same([{k: v for k, v in h.items() if k != "wall_time_s"}
                for h in again["history"]],
               [{k: v for k, v in h.items() if k != "wall_time_s"}
                for h in first["history"]])
  # the round-by-round figure needs every round's state: not after a resume
  assert not (tmp_path / "b" / "toy1d_rounds_exact.png").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(seeds=()), "Toy1DConfig.seeds=() must be a non-empty tuple"),
    (dict(seeds=(0, 0)), "names a seed twice"),
    (dict(mode="both-ways"), "Toy1DConfig.mode='both-ways'"),
])
def test_bad_configs_are_refused_naming_the_field(changes, message):
  with pytest.raises(ExperimentError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    toy1d.default_config().replace(**changes)
