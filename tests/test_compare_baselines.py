"""``compare_baselines.tune``: the grid runs at the tuning protocol, picks apply
to the reported config."""

import pytest

from scripts import compare_baselines
from scripts.configs import baselines as configs


def test_addition_grid_runs_at_the_tuning_budget_and_picks_apply_to_the_report(
    monkeypatch):
  exp = configs.get_addition_config()
  assert exp.tuning_run is not None
  assert exp.tuning_run.nre_budget < exp.run.nre_budget
  calls = []

  def fake_run_method(name, setup, point_exp, seeds, progress, final_eval_only,
                      run_dir):
    calls.append((name, point_exp, tuple(seeds), final_eval_only, run_dir))
    # the higher the reject fraction / learning rate, the "better"
    knob = (point_exp.banel.calibrated_reject_fraction if name == "banel"
            else point_exp.reinforce.learning_rate)
    return {"final_success_rate": [knob, knob], "wall_time_s": 1.0}

  monkeypatch.setattr(compare_baselines, "run_method", fake_run_method)
  chosen, record = compare_baselines.tune(None, exp, ["banel", "reinforce"],
                                          progress=False, run_dir="rd")
  assert [c[0] for c in calls] == ["banel"] * 6 + ["reinforce"] * 6
  for name, point_exp, seeds, final_only, run_dir in calls:
    assert point_exp.run == exp.tuning_run
    assert point_exp.final_eval_samples == 0
    assert seeds == exp.tuning_seeds and final_only
  assert [c[4] for c in calls[:2]] == ["rd/tune/banel_0", "rd/tune/banel_1"]
  # every grid point is distinct: the grid's knobs are ones the config uses
  banel_points = {(c[1].banel.calibrated_reject_fraction, c[1].banel.distill_reset)
                  for c in calls[:6]}
  assert len(banel_points) == 6
  # picks go into the reported config, at the reported budget and evaluation
  assert chosen.run == exp.run
  assert chosen.final_eval_samples == exp.final_eval_samples
  assert chosen.banel.calibrated_reject_fraction == 0.7
  assert chosen.reinforce.learning_rate == 1e-4
  assert record["run"]["nre_budget"] == exp.tuning_run.nre_budget
  assert record["methods"]["banel"]["chosen"][
      "banel.calibrated_reject_fraction"] == 0.7


def test_toy_grid_runs_at_the_reported_budget(monkeypatch):
  exp = configs.get_config()
  seen = []

  def fake_run_method(name, setup, point_exp, seeds, progress, final_eval_only,
                      run_dir):
    seen.append(point_exp.run)
    return {"final_success_rate": [0.0], "wall_time_s": 1.0}

  monkeypatch.setattr(compare_baselines, "run_method", fake_run_method)
  compare_baselines.tune(None, exp, ["reinforce"], progress=False)
  assert seen and all(r == exp.run for r in seen)


def test_banel_support_is_banel_with_the_tasks_support_check():
  exp = configs.get_tiny_config("toy1d")
  setup = compare_baselines.toy_setup(exp)
  assert "banel_support" not in setup.methods  # the toy has no free check
  with pytest.raises(ValueError, match="no free support check"):
    compare_baselines.build_method("banel_support", setup, exp)
  check = lambda x: x > 2  # noqa: E731
  method, cfg = compare_baselines.build_method(
      "banel_support", setup._replace(support=check), exp)
  assert method.support is check
  assert cfg == compare_baselines.build_method("banel", setup, exp)[1]
  assert compare_baselines._settings("banel_support", exp) == \
      compare_baselines._settings("banel", exp)


def test_self_imitation_grid_points_are_knobs_its_config_uses():
  for exp in (configs.get_config(), configs.get_addition_config()):
    points = compare_baselines.grid_points(dict(exp.grid)["self_imitation"])
    cfgs = {compare_baselines.apply_overrides(exp, p).self_imitation
            for p in points}
    assert len(points) == len(cfgs) == 6
    assert compare_baselines._settings("self_imitation", exp) == {
        "learning_rate": exp.self_imitation.learning_rate,
        "success_weight": exp.self_imitation.success_weight}


def test_self_imitation_runs_in_the_comparison_harness():
  exp = configs.get_tiny_config("toy1d")
  setup = compare_baselines.toy_setup(exp)
  assert "self_imitation" in setup.methods
  method, cfg = compare_baselines.build_method("self_imitation", setup, exp)
  assert cfg == exp.run
  run = compare_baselines.run_method("self_imitation", setup, exp, (0, 1),
                                     progress=False)
  assert run["nre_spent"] == [exp.run.nre_budget] * 2
  # the toy's prior finds successes within 300 queries, and the bank learns
  # from them: the final rate beats the pretrained model's 0.011 on average
  assert run["n_successes_found_in_training"] > 0
  assert sum(run["final_success_rate"]) / 2 > 0.05
