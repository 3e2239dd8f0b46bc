"""``banel compare`` (:mod:`banel_jax.experiments.compare`): the grid runs at the
tuning protocol and its picks apply to the reported config; methods, presets and
checks; a tiny comparison in process, and one through the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from banel_jax.core.config import jsonable
from banel_jax.experiments import compare, harness
from banel_jax.experiments.registry import ExperimentError, commands
from banel_jax.runtime.run_dir import RunDirError


def test_registered_with_presets_whose_defaults_run():
  command = commands()["compare"]
  assert command.config_cls is compare.CompareConfig
  assert command.default_preset == "toy1d"
  for name, make in command.presets.items():
    config = make()
    assert isinstance(config, compare.CompareConfig)
    # speed settings are resolved by backend, never baked in
    for section in ("banel", "reinforce", "rnd", "pseudo_count", "unlikelihood",
                    "self_imitation"):
      mb = getattr(config, section).train_microbatch
      assert mb in (0, "auto"), (name, section, mb)
  assert compare.addition_config().banel.train_microbatch == "auto"


def test_addition_grid_runs_at_the_tuning_budget_and_picks_apply_to_the_report(
    monkeypatch):
  config = compare.addition_config()
  assert config.tuning_run.nre_budget == 2500 < config.run.nre_budget
  calls = []

  def fake_run_method(name, setup, point, seeds, progress, final_eval_only,
                      run_dir, recorded=None):
    calls.append((name, point, tuple(seeds), final_eval_only, run_dir))
    # the higher the reject fraction / learning rate, the "better"
    knob = (point.banel.calibrated_reject_fraction if name == "banel"
            else point.reinforce.learning_rate)
    return {"final_success_rate": [knob, knob], "wall_time_s": 1.0,
            "settings": {}}

  monkeypatch.setattr(compare, "run_method", fake_run_method)
  chosen, record = compare.tune(None, config, ["banel", "reinforce"],
                                progress=False, run_dir="rd")
  assert [c[0] for c in calls] == ["banel"] * 6 + ["reinforce"] * 6
  for name, point, seeds, final_only, run_dir in calls:
    assert point.run == config.tuning_run
    assert point.final_eval_samples == 0
    assert seeds == config.tuning_seeds and final_only
  assert [c[4] for c in calls[:2]] == [os.path.join("rd", "tune", "banel_0"),
                                       os.path.join("rd", "tune", "banel_1")]
  # every grid point is distinct: the grid's knobs are ones the config uses
  banel_points = {(c[1].banel.calibrated_reject_fraction, c[1].banel.distill_reset)
                  for c in calls[:6]}
  assert len(banel_points) == 6
  # picks go into the reported config, at the reported budget and evaluation
  assert chosen.run == config.run
  assert chosen.final_eval_samples == config.final_eval_samples
  assert chosen.banel.calibrated_reject_fraction == 0.7
  assert chosen.reinforce.learning_rate == 1e-4
  assert record["run"]["nre_budget"] == 2500
  assert record["methods"]["banel"]["chosen"][
      "banel.calibrated_reject_fraction"] == 0.7


def test_toy_grid_runs_at_the_reported_budget(monkeypatch):
  config = compare.toy1d_config()
  seen = []

  def fake_run_method(name, setup, point, seeds, progress, final_eval_only,
                      run_dir, recorded=None):
    seen.append(point.run)
    return {"final_success_rate": [0.0], "wall_time_s": 1.0, "settings": {}}

  monkeypatch.setattr(compare, "run_method", fake_run_method)
  compare.tune(None, config, ["reinforce"], progress=False)
  assert seen and all(r == config.run for r in seen)


def test_a_grid_point_that_stops_is_recorded_and_never_picked(monkeypatch):
  from banel_jax.core.posterior import AcceptanceRateError
  config = compare.toy1d_config()

  def fake_run_method(name, setup, point, seeds, progress, final_eval_only,
                      run_dir, recorded=None):
    if point.banel.filter_factor == 2.0:  # the "best" point stops
      err = AcceptanceRateError("no sample left")
      err.settings = {"f": 2.0}
      raise err
    f = point.banel.filter_factor
    return {"final_success_rate": [f], "wall_time_s": 1.0, "settings": {"f": f}}

  monkeypatch.setattr(compare, "run_method", fake_run_method)
  chosen, record = compare.tune(None, config, ["banel"], progress=False)
  points = record["methods"]["banel"]["points"]
  assert [p["error"] for p in points if p["mean"] is None] == [
      "AcceptanceRateError"] * 2
  assert chosen.banel.filter_factor == 1.2
  monkeypatch.setattr(compare, "grid_points", lambda axes: [
      {"banel.filter_factor": 2.0}])
  with pytest.raises(ExperimentError, match="every grid point of banel stopped"):
    compare.tune(None, config, ["banel"], progress=False)


def test_the_grid_is_recorded_point_by_point_and_reloaded(tmp_path, capsys,
                                                          monkeypatch):
  """``out/tuning.json`` is rewritten after every point; a later sitting on a
  machine without the run directories loads the points it holds."""
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)
  run_method, done = compare.run_method, []

  def killed_after_two(*args, **kwargs):
    if len(done) == 2:
      raise KeyboardInterrupt
    done.append(run_method(*args, **kwargs))
    return done[-1]

  monkeypatch.setattr(compare, "run_method", killed_after_two)
  with pytest.raises(KeyboardInterrupt):
    compare.tune(setup, config, ["reinforce"], progress=False, out=tmp_path)
  first = json.loads((tmp_path / "tuning.json").read_text())
  assert len(first["methods"]["reinforce"]["points"]) == 2
  monkeypatch.undo()
  capsys.readouterr()
  chosen, record = compare.tune(setup, config, ["reinforce"], progress=False,
                                out=tmp_path)
  assert capsys.readouterr().out.count("loaded from") == 2
  points = record["methods"]["reinforce"]["points"]
  assert len(points) == 6 and jsonable(points[:2]) == \
      first["methods"]["reinforce"]["points"]
  assert record["methods"]["reinforce"]["chosen"] == max(
      points, key=lambda p: p["mean"])["overrides"]
  # The comparison with --tune loads the grid too, and its README says how
  # the picks were made.
  capsys.readouterr()
  compare.run(config.replace(tune=True, methods=("reinforce",)), tmp_path,
              progress=False)
  assert capsys.readouterr().out.count("loaded from") == 6
  readme = (tmp_path / "README.md").read_text()
  assert (f"each tuned method's grid (6 points) ran on seeds "
          f"{list(config.tuning_seeds)} at NRE {config.tuning_run.nre_budget:,}") in readme


def test_banel_support_is_banel_with_the_tasks_support_check():
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)
  assert "banel_support" not in setup.methods  # the toy has no free check
  with pytest.raises(ExperimentError, match="no free support check"):
    compare.build_method("banel_support", setup, config)
  method, cfg, (ext,) = compare.build_method(
      "banel_support", setup._replace(support=lambda x: x > 2), config)
  assert method is None and ext.name == "support" and ext.task_knowledge
  assert np.asarray(ext.accept(ext.init(None), np.arange(5))).tolist() == [
      False, False, False, True, True]
  plain = compare.build_method("banel", setup, config)
  assert plain.method is None and plain.extensions == () and cfg == plain.run_config
  assert cfg.nre_budget == config.run.nre_budget  # the run's fields, for all
  assert compare.method_settings("banel_support", config) == \
      compare.method_settings("banel", config)


def test_banel_default_is_banel_with_the_suites_tuned_changes():
  from banel_jax.experiments.suite import TUNED
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)
  paper = compare.build_method("banel", setup, config).run_config
  method, cfg, extensions = compare.build_method("banel_default", setup, config)
  assert method is None and extensions == ()
  assert cfg.distill_reset and cfg.distill_prior_share == TUNED["distill_prior_share"]
  for k in ("failure_learning_rate", "distill_learning_rate"):
    assert cfg.replace(**{k: getattr(paper, k)}) != cfg  # scaled, not copied
    assert getattr(cfg, k) == pytest.approx(0.3 * getattr(paper, k))
  assert cfg.filter_factor == TUNED["filter_factor"]
  same = {f: getattr(cfg, f) for f in ("nre_budget", "samples_per_round",
                                       "failure_epochs", "distill_samples")}
  assert same == {f: getattr(paper, f) for f in same}
  shown = compare.method_settings("banel_default", compare.addition_config())
  assert shown["distill_prior_share"] == 0.5 and "filter_factor" not in shown
  assert compare.LABELS["banel_default"].startswith("BaNEL (defaults")


def test_banel_replay_is_banel_with_a_success_bank_and_says_it_learns_from_successes():
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)
  assert "banel_replay" in setup.methods
  method, cfg, (ext,) = compare.build_method("banel_replay", setup, config)
  assert method is None and ext.name == "success_replay" and ext.uses_successes
  assert ext.config == config.success_replay
  assert cfg == compare.build_method("banel", setup, config).run_config
  shown = compare.method_settings("banel_replay", compare.addition_config())
  assert shown == {**compare.method_settings("banel", compare.addition_config()),
                   "replay_bank_size": 256, "replay_weight": 100.0}
  assert "learns from successes" in compare.LABELS["banel_replay"]
  run = compare.run_method("banel_replay", setup, config, (0, 1), progress=False)
  assert run["nre_spent"] == [config.run.nre_budget] * 2
  task = compare.canonical_task(config, {"banel_replay": run, "rnd": run},
                                {"rate": 0.011, "estimate": {"trials": 1000}})
  entry = task["methods"]["banel_replay"]
  assert entry["uses_successes"] and not entry["task_knowledge"]
  # a row that learns from successes is not set against the novelty bonuses
  assert "banel_vs_best_bonus" not in task


def test_self_imitation_grid_points_are_knobs_its_config_uses():
  for config in (compare.toy1d_config(), compare.addition_config()):
    points = compare.grid_points(dict(config.grid)["self_imitation"])
    cfgs = {compare.apply_overrides(config, p).self_imitation for p in points}
    assert len(points) == len(cfgs) == 6
    assert compare.method_settings("self_imitation", config) == {
        "learning_rate": config.self_imitation.learning_rate,
        "success_weight": config.self_imitation.success_weight}


def test_config_refuses_what_the_task_cannot_run():
  with pytest.raises(ExperimentError, match="does not support banel_support"):
    compare.toy1d_config().replace(methods=("banel", "banel_support"))
  with pytest.raises(ExperimentError, match="does not support exact_count"):
    compare.addition_config().replace(methods=("exact_count",))
  with pytest.raises(ExperimentError, match="final_eval_samples=10 applies to"):
    compare.toy1d_config().replace(final_eval_samples=10)
  with pytest.raises(ExperimentError, match="seeds=.* names a seed twice"):
    compare.toy1d_config().replace(seeds=(0, 0))
  assert compare.addition_config().method_list == (
      "banel", "banel_default", "banel_support", "banel_replay", "reinforce", "rnd",
      "pseudo_count", "unlikelihood", "exact_rejection", "self_imitation")


def test_check_against_preset_names_the_flags_that_do_not_apply():
  toy = compare.toy1d_config()
  compare.check_against_preset(toy.replace(methods=("banel",)), toy)
  with pytest.raises(ExperimentError, match="pick the task with --preset"):
    compare.check_against_preset(toy.replace(task="addition"), toy)
  with pytest.raises(ExperimentError, match="--target, --leading-zeros-malformed"):
    compare.check_against_preset(
        toy.replace(target="target_msb", leading_zeros_malformed=True), toy)
  with pytest.raises(ExperimentError, match="--banel.nre-budget: .* --run"):
    compare.check_against_preset(
        toy.replace(banel=toy.banel.replace(nre_budget=50)), toy)
  addition = compare.addition_config()
  with pytest.raises(ExperimentError, match="--toy"):
    compare.check_against_preset(
        addition.replace(toy=addition.toy.__class__(num_bins=21)), addition)


def test_self_imitation_runs_in_the_comparison_harness():
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)
  assert "self_imitation" in setup.methods
  assert compare.build_method("self_imitation", setup, config).run_config == \
      config.run
  run = compare.run_method("self_imitation", setup, config, (0, 1), progress=False)
  assert run["nre_spent"] == [config.run.nre_budget] * 2
  # the toy's prior finds successes within 300 queries, and the bank learns
  # from them: the final rate beats the pretrained model's 0.011 on average
  assert run["n_successes_found_in_training"] > 0
  assert sum(run["final_success_rate"]) / 2 > 0.05


def test_tiny_comparison_writes_its_table_and_resumes(tmp_path):
  config = compare.toy1d_tiny_config().replace(
      methods=("banel", "reinforce"), pretrained_samples=4096,
      run_dir=str(tmp_path / "run"))
  out = tmp_path / "out"
  summary = compare.run(config, out, progress=False)
  assert [r["key"] for r in summary["rows"]] == ["banel", "reinforce"]
  saved = json.loads((out / "comparison.json").read_text())
  assert saved["config"]["methods"] == ["banel", "reinforce"]
  assert set(saved["runs"]) == {"banel", "reinforce"}
  for row in saved["rows"]:
    assert row["nre_spent"] == [300, 300] and len(row["final_per_seed"]) == 2
    assert 0.0 <= row["final_exact"]["mean"] <= 1.0  # the toy's exact rates
  assert saved["pretrained"]["estimate"]["trials"] == 4096
  table = (out / "comparison.md").read_text()
  assert "| BaNEL (paper) |" in table and "| REINFORCE |" in table
  assert (out / "success_vs_nre.png").stat().st_size > 0
  assert (tmp_path / "run" / "banel" / compare.RESULT_FILE).exists()
  canonical = json.loads((out / "summary.json").read_text())["tasks"]["toy1d"]
  banel, reinforce = canonical["methods"]["banel_paper"], canonical["methods"]["reinforce"]
  assert banel["seeds"] == [0, 1] and banel["uses_successes"] is False
  assert "mann_whitney_p_vs_banel" in reinforce["statistics_final"]
  assert 0.0 <= reinforce["statistics_final"]["mann_whitney_p_vs_banel"] <= 1.0
  lo, hi = banel["statistics_final"]["median_ci95"]
  assert lo <= banel["statistics_final"]["median"] <= hi
  readme = (out / "README.md").read_text()
  assert "| BaNEL (paper) | 2 |" in readme and "| REINFORCE | 2 |" in readme
  assert "Observations" in readme and "Wall time and machine" in readme
  # a rerun keeps the README's hand-written observations
  (out / "README.md").write_text(readme.replace(
      "(No observations recorded yet: look at the figures and write them here.)",
      "BaNEL moved; REINFORCE did not."))
  compare.run(config, out, progress=False)
  assert "BaNEL moved; REINFORCE did not." in (out / "README.md").read_text()
  # a rerun loads every finished method instead of running it again
  again = compare.run(config, tmp_path / "again", progress=False)
  assert [r["final_per_seed"] for r in again["rows"]] == \
      [r["final_per_seed"] for r in summary["rows"]]


def test_a_table_grows_by_a_row_from_its_own_record(tmp_path, capsys, monkeypatch):
  """Without a run directory the folder is written after each method, and a
  rerun into it loads what its comparison.json holds (same settings), runs
  only the methods it lacks, and runs a method again when one of its settings
  changed."""
  config = compare.toy1d_tiny_config().replace(methods=("banel", "reinforce"),
                                               pretrained_samples=4096)
  out = tmp_path / "out"
  run_method = compare.run_method

  def killed_at_reinforce(name, *args, **kwargs):
    if name == "reinforce" and not kwargs.get("load_only"):
      raise KeyboardInterrupt
    return run_method(name, *args, **kwargs)

  monkeypatch.setattr(compare, "run_method", killed_at_reinforce)
  with pytest.raises(KeyboardInterrupt):
    compare.run(config, out, progress=False)
  partial = json.loads((out / "comparison.json").read_text())
  assert list(partial["runs"]) == ["banel"]
  assert "| BaNEL (paper) | 2 |" in (out / "README.md").read_text()
  monkeypatch.undo()
  capsys.readouterr()
  first = compare.run(config, out, progress=False)
  assert capsys.readouterr().out.count("loaded from") == 1
  saved = json.loads((out / "comparison.json").read_text())
  assert saved["runs"]["banel"] == partial["runs"]["banel"]
  assert saved["runs"]["reinforce"]["settings"]["method"] == "reinforce"
  grown = compare.run(config.replace(methods=("banel", "reinforce", "rnd")), out,
                      progress=False)
  printed = capsys.readouterr().out
  assert printed.count(f"loaded from {out / 'comparison.json'}") == 2
  assert [r["key"] for r in grown["rows"]] == ["banel", "reinforce", "rnd"]
  for old, new in zip(first["rows"], grown["rows"]):
    assert new == old  # the same record: rates, wall time, settings
  history = json.loads((out / "comparison.json").read_text())["runs"]
  assert history["banel"] == saved["runs"]["banel"]
  slower = config.reinforce.replace(learning_rate=0.01)
  compare.run(config.replace(methods=("reinforce",), reinforce=slower), out,
              progress=False)
  assert "loaded from" not in capsys.readouterr().out
  assert compare.recorded_runs(tmp_path / "nothing") == {}
  (out / "comparison.json").write_text('{"runs": {"banel": ')  # cut off
  with pytest.raises(ExperimentError, match="comparison.json is not a study's "
                     "record .* move it aside"):
    compare.run(config, out, progress=False)


@pytest.mark.slow
def test_command_line_runs_a_tiny_comparison(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "out"
  base = [sys.executable, "-m", "banel_jax", "compare", "--preset", "toy1d-tiny",
          "--no-progress"]
  refused = subprocess.run(base + ["--methods", "banel_support"], env=env,
                           capture_output=True, text=True)
  assert refused.returncode == 2 and "does not support banel_support" in refused.stderr
  subprocess.run(base + ["--methods", "banel", "--pretrained-samples", "2048",
                         "--out", str(out)], env=env, check=True,
                 capture_output=True)
  saved = json.loads((out / "comparison.json").read_text())
  assert saved["command"].startswith("banel compare --preset toy1d-tiny")
  assert saved["preset"] == "toy1d-tiny"
  assert [r["key"] for r in saved["rows"]] == ["banel"]


def test_addition_tables_divide_by_the_shipped_calibration():
  """One pretrained rate per target: the calibration shipped with it."""
  for preset, successes in (("addition", 52), ("addition-msb", 122)):
    config = compare.PRESETS[preset]()
    rate = compare.shipped_pretrained_rate(config)
    assert rate["estimate"]["successes"] == successes
    assert rate["estimate"]["trials"] == 200_704
  assert compare.task_id(compare.addition_msb_config()) == "addition_msb"
  assert compare.addition_msb_config().seeds == tuple(range(10))
  assert compare.shipped_pretrained_rate(compare.toy1d_config()) is None


def test_statistics_of_a_method_against_banel():
  stats = compare.statistics([1.0, 2.0, 3.0], reference=[10.0, 20.0, 30.0])
  assert stats["median"] == 2.0 and stats["mean"] == 2.0
  assert stats["mann_whitney_p_vs_banel"] == pytest.approx(0.1, abs=1e-9)
  assert compare.statistics([1.0, 1.0], reference=[1.0, 1.0])[
      "mann_whitney_p_vs_banel"] == 1.0


def _stopping(config):
  # exact mode with a floor no region leaves: BaNEL stops in its second round
  return config.banel.replace(mode="exact", tau_mode="calibrated",
                              min_acceptance_rate=0.9)


@pytest.mark.slow
def test_frozen_seeds_keep_their_row_and_are_listed(tmp_path):
  # a distillation floor no calibrated region leaves: every seed freezes in
  # its first round and keeps the pretrained generator
  config = compare.toy1d_tiny_config()
  config = config.replace(methods=("banel",), pretrained_samples=4096,
                          banel=config.banel.replace(tau_mode="calibrated",
                                                     min_acceptance_rate=0.9))
  with pytest.warns(UserWarning, match="froze"):
    summary = compare.run(config, tmp_path, progress=False)
  (row,) = summary["rows"]
  assert row["frozen_at"] == [1] * len(config.seeds)
  assert row["nre_spent"] == [config.run.samples_per_round] * len(config.seeds)
  readme = (tmp_path / "README.md").read_text()
  assert "**Frozen seeds**" in readme
  assert f"seed {config.seeds[0]} in round 1 ({config.run.samples_per_round:,} NRE)" \
      in readme


@pytest.mark.slow
def test_a_method_that_stops_is_named_and_the_others_run_on(tmp_path):
  config = compare.toy1d_tiny_config()
  config = config.replace(methods=("banel", "reinforce"), pretrained_samples=4096,
                          banel=_stopping(config))
  summary = compare.run(config, tmp_path, progress=False)
  assert list(summary["stopped"]) == ["banel"]
  assert summary["stopped"]["banel"]["error"] == "AcceptanceRateError"
  assert [r["key"] for r in summary["rows"]] == ["reinforce"]
  readme = (tmp_path / "README.md").read_text()
  assert "**Stopped**" in readme and "`AcceptanceRateError`" in readme
  task = json.loads((tmp_path / "summary.json").read_text())["tasks"]["toy1d"]
  assert list(task["methods"]) == ["reinforce"]
  with pytest.raises(ExperimentError, match="every method stopped"):
    compare.run(config.replace(methods=("banel",)), tmp_path / "none", progress=False)


@pytest.mark.slow
def test_a_stopped_run_is_recorded_and_not_replayed(tmp_path, capsys):
  config = compare.toy1d_tiny_config()
  config = config.replace(methods=("banel", "reinforce"), pretrained_samples=4096,
                          run_dir=str(tmp_path / "runs"),
                          banel=_stopping(config))
  compare.run(config, tmp_path / "out", progress=False)
  banel_dir = tmp_path / "runs" / "banel"
  stop = json.loads((banel_dir / harness.STOPPED_FILE).read_text())
  assert stop["result"]["error"] == "AcceptanceRateError"
  assert stop["settings"]["method"] == "banel"
  ledger = (banel_dir / "ledger.jsonl").read_bytes()
  metrics = (banel_dir / "metrics.jsonl").read_bytes()
  # the rounds before the stop are kept with it, and drawn
  rounds = [json.loads(l) for l in metrics.decode().splitlines() if l.strip()]
  assert rounds and stop["result"]["history"] == rounds
  saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
  assert saved["stopped"]["banel"]["history"] == rounds
  assert "dashed in the plot" in (tmp_path / "out" / "README.md").read_text()
  capsys.readouterr()
  again = compare.run(config, tmp_path / "again", progress=False)
  out = capsys.readouterr().out
  assert "stopped earlier" in out and "loaded from" in out  # reinforce's result
  assert again["stopped"]["banel"]["error"] == "AcceptanceRateError"
  assert again["stopped"]["banel"]["history"] == rounds
  # a stop recorded without its rounds takes them from the metrics file
  del stop["result"]["history"]
  (banel_dir / harness.STOPPED_FILE).write_text(json.dumps(stop))
  assert compare.run(config, tmp_path / "older", progress=False)[
      "stopped"]["banel"]["history"] == rounds
  # nothing ran again: no round, no oracle call
  assert (banel_dir / "ledger.jsonl").read_bytes() == ledger
  assert (banel_dir / "metrics.jsonl").read_bytes() == metrics
  # the folder's own record keeps the stop too, for a rerun without the runs
  capsys.readouterr()
  compare.run(config.replace(run_dir=None), tmp_path / "out", progress=False)
  record = tmp_path / "out" / "comparison.json"
  assert f"stopped earlier: {record}" in capsys.readouterr().out
  assert json.loads(record.read_text())["stopped"]["banel"]["settings"] == \
      stop["settings"]
  assert json.loads(record.read_text())["stopped"]["banel"]["history"] == rounds
  # other settings are refused, as for a finished run
  with pytest.raises(RunDirError, match="other settings"):
    compare.run(config.replace(seeds=(5,), methods=("banel",)), tmp_path / "x",
                progress=False)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                    reason="counts the process's memory mappings (Linux)")
def test_runs_in_turn_release_their_compiled_programs():
  """A study runs method after method in one process; each run's compiled
  programs are released after it, so the process's memory mappings stay flat
  (they once grew until the kernel's limit killed a tuning grid)."""
  config = compare.toy1d_tiny_config()
  setup = compare.toy_setup(config)

  def mappings():
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)

  def one_run(i):
    cfg = compare.apply_overrides(config, {"reinforce.learning_rate": 1e-4 * (i + 1)})
    compare.run_method("reinforce", setup, cfg, (100,), False, final_eval_only=True)

  one_run(0)  # what stays compiled at module level: the first run's
  before = mappings()
  for i in range(1, 4):
    one_run(i)
  grown = mappings() - before
  assert grown < 100, f"{grown} new memory mappings after 3 runs"


def test_a_row_leaves_out_the_rounds_a_frozen_seed_scored_nothing():
  """A frozen seed scores no sample: its per-round diagnostics are ``None``
  and the row's means are over the seeds that scored."""
  config = compare.toy1d_tiny_config()
  hist = [{"round": 0, "success_rate": [0.1, 0.1]},
          {"round": 1, "n_distinct_train": [10, 8], "malformed_train": [0.5, 0.1]},
          {"round": 2, "n_distinct_train": [6, None], "malformed_train": [0.3, None],
           "success_rate": [0.2, 0.1]}]
  run = {"history": hist, "final_success_rate": [0.2, 0.1],
         "best_success_rate": [0.2, 0.1], "wall_time_s": 1.0,
         "nre_spent": [20, 10], "frozen_at": [None, 2], "eval_calls": 4,
         "n_successes_found_in_training": 0}
  pretrained = {"rate": 0.1, "estimate": {"trials": 1000}}
  row = compare.summarize_run("banel", run, pretrained, config)
  assert row["malformed_train"] == pytest.approx(0.3)
  assert row["distinct_per_round_mean"] == pytest.approx(8.0)
  assert row["distinct_per_round_last"] == pytest.approx(6.0)
  assert row["frozen_at"] == [None, 2]
  lines = compare.frozen_lines([row], seeds=(0, 1), budget=20)
  assert "- BaNEL (paper): 1 of 2 seeds; seed 1 in round 2 (10 NRE)." in lines
