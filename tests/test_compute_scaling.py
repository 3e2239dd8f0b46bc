"""``banel scaling`` (:mod:`banel_jax.experiments.scaling`): BaNEL, RND and
pseudo-counts at matched compute in compare's harness.

The runs themselves are too slow for most tests; here each (method, E)'s
``result.json`` is written by the test with the settings that compare's
resumable runs record, so the study must load it (training is disabled) and
aggregate it correctly, and must refuse one made with other settings. One slow
test runs the ``tiny`` preset through the command line, twice.
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import banel_jax
from banel_jax import cli
from banel_jax.experiments import compare, harness, scaling
from banel_jax.experiments.registry import ExperimentError, commands
from banel_jax.runtime.run_dir import RunDirError

RATE0 = compare.shipped_pretrained_rate(scaling.tiny_config().compare)["rate"]


@pytest.fixture(scope="module")
def setup():
  """The tiny study's task (the shipped target_msb and attacker)."""
  return compare.addition_setup(scaling.tiny_config().compare)


@pytest.fixture
def no_training(monkeypatch):
  """Fails any run that would train instead of loading a finished one."""
  def refuse(*args, **kwargs):
    raise AssertionError("a run trained instead of loading its result.json")
  monkeypatch.setattr(banel_jax, "BanelRunner", refuse)


def _fake_run(root, config, setup, method, epochs, final, best=None, large=None,
              wall=1.0):
  """A finished run of ``method`` at ``epochs`` in ``root``, as compare's
  :func:`~banel_jax.experiments.compare.run_method` records one."""
  cfg = config.compare_for(method, epochs)
  build = compare.build_method(method, setup, cfg)
  settings = compare.run_settings(method, setup, cfg, cfg.seeds, build.run_config)
  n = len(cfg.seeds)
  result = {"history": [], "final_success_rate": list(final),
            "best_success_rate": list(best if best is not None else final),
            "nre_spent": [cfg.run.nre_budget] * n, "eval_calls": [0] * n,
            "n_successes_found_in_training": 0, "wall_time_s": wall,
            "final_s": 0.0, "final_large_eval": large}
  d = root / scaling.run_name(method, epochs)
  d.mkdir(parents=True, exist_ok=True)
  harness.write_json_atomic(d / harness.RESULT_FILE,
                            {"settings": settings, "result": result})
  return d / harness.RESULT_FILE


def _three_seeds(tmp_path, name="runs", seeds=(0, 1, 2)):
  base = scaling.tiny_config()
  return base.replace(epochs=(1, 10), run_dir=str(tmp_path / name),
                      compare=base.compare.replace(seeds=seeds))


def test_registered_with_presets_that_hold_compares_picks():
  command = commands()["scaling"]
  assert command.config_cls is scaling.ScalingConfig
  assert set(command.presets) == {"default", "paper", "tiny"}
  msb = compare.addition_msb_config()
  default = scaling.default_config()
  assert default.epochs == (1, 3, 10)
  assert default.methods == ("banel", "rnd", "pseudo_count")
  c = default.compare
  assert (c.task, c.target, c.leading_zeros_malformed) == (
      "addition", "target_msb", True)
  assert (c.seeds, c.run.nre_budget) == ((0, 1, 2), 2500)
  assert c.run.replace(nre_budget=msb.run.nre_budget) == msb.run
  for section in ("banel", "rnd", "rnd_bonus", "pseudo_count", "pseudo_count_bonus"):
    assert getattr(c, section) == getattr(msb, section), section
  assert c.banel.train_microbatch == "auto"
  paper = scaling.paper_config()
  assert paper.epochs == (1, 2, 3, 5, 10, 20, 50, 100)
  assert (paper.compare.seeds, paper.compare.run.nre_budget) == (
      (0, 1, 2, 3, 4), 7500)
  assert paper.compare.leading_zeros_malformed and paper.methods == default.methods
  tiny = scaling.tiny_config()
  assert len(tiny.epochs) == 2 and tiny.compare.seeds == (0,)
  assert tiny.compare.run == compare.addition_tiny_config().run
  assert compare.task_id(tiny.compare) == compare.task_id(c) == "addition_msb"


def test_each_method_runs_with_its_knob_at_E(tmp_path):
  config = scaling.default_config()
  for method, (section, field) in (("banel", ("banel", "failure_epochs")),
                                   ("rnd", ("rnd_bonus", "predictor_steps")),
                                   ("pseudo_count",
                                    ("pseudo_count_bonus", "density_steps"))):
    assert scaling.KNOBS[method] == f"{section}.{field}"
    one = config.compare_for(method, 7)
    assert getattr(getattr(one, section), field) == 7
    assert getattr(getattr(config.compare, section), field) != 7
    # nothing else changes
    assert one.replace(**{section: getattr(config.compare, section)}) == config.compare
  assert config.run_root(tmp_path) == tmp_path / "runs"
  assert config.replace(run_dir="x").run_root(tmp_path) == pathlib.Path("x")
  assert scaling.run_name("pseudo_count", 20) == "pseudo_count_e20"


@pytest.mark.parametrize("changes, message", [
    ({"epochs": (0,)},
     "ScalingConfig.epochs=(0,) must be a non-empty tuple of integers >= 1"),
    ({"epochs": ()}, "ScalingConfig.epochs=() must be a non-empty tuple"),
    ({"epochs": (3, 3)}, "ScalingConfig.epochs=(3, 3) names a value twice"),
    ({"methods": ()}, "ScalingConfig.methods=() must be a non-empty tuple"),
    ({"methods": ("reinforce",)}, "ScalingConfig.methods: ['reinforce'] are not"),
    ({"methods": ("rnd", "rnd")}, "ScalingConfig.methods=('rnd', 'rnd') names a"),
    ({"compare": "addition"}, "ScalingConfig.compare must be a CompareConfig"),
    ({"compare": compare.toy1d_config()}, "ScalingConfig.compare.task='toy1d'"),
    ({"run_dir": ""}, "ScalingConfig.run_dir='' must be a directory"),
    ({"pool": ("a", "a")}, "ScalingConfig.pool=('a', 'a') names a study twice"),
    ({"pool": ("",)}, "ScalingConfig.pool=('',) must be a tuple of directories"),
])
def test_rejects_bad_settings_naming_the_field(changes, message):
  with pytest.raises(ExperimentError) as e:
    scaling.default_config().replace(**changes)
  assert message in str(e.value)


@pytest.mark.parametrize("changes, message", [
    ({"methods": ("banel",)}, "ScalingConfig.compare.methods=('banel',): set the "
     "methods with ScalingConfig.methods"),
    ({"tune": True}, "ScalingConfig.compare.tune=True"),
    ({"run_dir": "x"}, "ScalingConfig.compare.run_dir='x'"),
])
def test_rejects_compare_settings_the_study_owns(changes, message):
  base = scaling.default_config()
  with pytest.raises(ExperimentError) as e:
    base.replace(compare=base.compare.replace(**changes))
  assert message in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--compare.banel.failure-epochs", "5"],
     "--compare.banel.failure-epochs: the study sets them from --epochs"),
    (["--compare.rnd-bonus.predictor-steps", "5",
      "--compare.pseudo-count-bonus.density-steps", "5"],
     "--compare.rnd-bonus.predictor-steps, --compare.pseudo-count-bonus."
     "density-steps: the study sets them"),
    (["--compare.banel.nre-budget", "500"],
     "--compare.banel.nre-budget: every method shares the run's budget"),
    (["--compare.toy.num-bins", "21"], "--compare.toy.* apply to the toy only"),
    (["--methods", "reinforce"], "invalid choice"),
    (["--compare.methods", "rnd"], "set the methods with ScalingConfig.methods"),
])
def test_the_command_line_refuses_flags_the_study_sets(capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    cli.main(["scaling", *argv])
  assert e.value.code == 2
  err = " ".join(capsys.readouterr().err.replace("\u2502", " ").split())
  assert message in err


def test_loads_finished_runs_and_writes_every_output(tmp_path, setup, no_training):
  config = _three_seeds(tmp_path)
  root = tmp_path / "runs"
  k = RATE0
  _fake_run(root, config, setup, "banel", 1, [1 * k, 2 * k, 6 * k],
            best=[2 * k, 2 * k, 6 * k], wall=10.0)
  # a run with the large final evaluation: its rates are the final ones
  _fake_run(root, config, setup, "rnd", 1, [0.0, 0.0, 0.0],
            best=[k, k, k], large=[{"rate": v * k} for v in (3.0, 3.0, 9.0)],
            wall=20.0)
  _fake_run(root, config, setup, "pseudo_count", 1, [0.0, k, 0.0], wall=30.0)
  for m, f in (("banel", 20.0), ("rnd", 1.0), ("pseudo_count", 0.5)):
    _fake_run(root, config, setup, m, 10, [f * k] * 3)
  out = tmp_path / "out"
  record = scaling.run(config, out, progress=False)

  saved = json.loads((out / "scaling.json").read_text())
  assert saved == json.loads(json.dumps(record))
  assert saved["config"]["epochs"] == [1, 10]
  assert saved["pretrained"]["rate"] == pytest.approx(RATE0)
  assert "shipped calibration" in saved["pretrained"]["source"]
  assert [(r["method"], r["epochs"]) for r in saved["rows"]] == [
      ("banel", 1), ("rnd", 1), ("pseudo_count", 1),
      ("banel", 10), ("rnd", 10), ("pseudo_count", 10)]
  banel1, rnd1, pc1 = saved["rows"][:3]
  assert banel1["improvement_final"]["per_seed"] == pytest.approx([1, 2, 6])
  assert banel1["improvement_final"]["mean"] == pytest.approx(3.0)
  assert banel1["improvement_final"]["median"] == pytest.approx(2.0)
  lo, hi = banel1["improvement_final"]["median_ci95"]
  assert 1.0 <= lo <= 2.0 <= hi <= 6.0
  assert banel1["improvement_best"]["per_seed"] == pytest.approx([2, 2, 6])
  assert rnd1["improvement_final"]["per_seed"] == pytest.approx([3, 3, 9])
  assert rnd1["final_rate"] == pytest.approx([3 * k, 3 * k, 9 * k])
  assert [r["wall_time_s"] for r in (banel1, rnd1, pc1)] == [10.0, 20.0, 30.0]
  assert all(r["loaded"] for r in saved["rows"])
  assert rnd1["knob"] == "rnd_bonus.predictor_steps"
  assert rnd1["run_dir"] == str(root / "rnd_e1")
  assert saved["total_wall_time_s"] == pytest.approx(63.0)
  assert (out / "scaling.png").stat().st_size > 0

  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) >= {"name", "command", "machine", "wall_time_s", "tasks"}
  assert list(summary["tasks"]) == ["addition_msb_e1", "addition_msb_e10"]
  task = summary["tasks"]["addition_msb_e1"]
  assert task["pretrained_rate"] == pytest.approx(RATE0)
  assert task["pretrained_samples"] == 200_704 and task["nre_budget"] == 128
  assert list(task["methods"]) == ["banel_paper", "rnd", "pseudo_counts"]
  for entry in task["methods"].values():
    assert entry["seeds"] == [0, 1, 2]
    assert entry["uses_successes"] is False and entry["task_knowledge"] is False
    for key in ("final_rate", "best_rate", "improvement_final", "improvement_best"):
      assert len(entry[key]) == 3
    assert entry["improvement_final"] == pytest.approx(
        [v / RATE0 for v in entry["final_rate"]])
  rnd = task["methods"]["rnd"]
  assert rnd["compute"] == {"knob": "rnd_bonus.predictor_steps", "value": 1}
  assert 0.0 <= rnd["statistics_final"]["mann_whitney_p_vs_banel"] <= 1.0
  assert "mann_whitney_p_vs_banel" not in \
      task["methods"]["banel_paper"]["statistics_final"]
  assert task["methods"]["pseudo_counts"]["share_below_1x"] == pytest.approx(2 / 3)
  versus = summary["tasks"]["addition_msb_e10"]["banel_vs_best_bonus"]
  assert versus["banel_paper"]["final"]["bonus"] == "rnd"
  assert versus["banel_paper"]["final"]["ratio"] == pytest.approx(20.0)

  readme = (out / "README.md").read_text()
  assert "| 1 | BaNEL (paper) | 3 | 2x [" in readme
  assert "| 10 | pseudo-count | 3 | 0.5x [" in readme
  assert "![improvement against E](scaling.png)" in readme
  assert "`rnd_bonus.predictor_steps`" in readme
  assert "**Statistics at E = 10** (`addition_msb_e10`" in readme
  assert "<!-- observations:start -->" in readme and "Wall time and machine" in readme


def test_a_rerun_keeps_the_readmes_observations(tmp_path, setup, no_training):
  config = _three_seeds(tmp_path).replace(epochs=(1,), methods=("rnd",))
  _fake_run(tmp_path / "runs", config, setup, "rnd", 1, [RATE0] * 3)
  out = tmp_path / "out"
  scaling.run(config, out, progress=False)
  readme = (out / "README.md").read_text()
  placeholder = "(No observations recorded yet"
  assert placeholder in readme
  (out / "README.md").write_text(readme.replace(
      readme[readme.index(placeholder):readme.index("<!-- observations:end -->")],
      "RND stayed at the pretrained rate.\n"))
  scaling.run(config, out, progress=False)
  again = (out / "README.md").read_text()
  assert "RND stayed at the pretrained rate." in again and placeholder not in again
  assert again.count("<!-- observations:start -->") == 1


def test_a_rerun_into_the_folder_loads_its_recorded_rows(tmp_path, setup,
                                                        no_training, capsys):
  """Without the run directories (another machine) the folder's own record
  loads: finished rows, and a stop raised again instead of rerun."""
  import shutil
  config = _three_seeds(tmp_path).replace(epochs=(1,))
  root = tmp_path / "runs"
  for m in scaling.METHODS:
    _fake_run(root, config, setup, m, 1, [2 * RATE0] * 3, wall=5.0)
  out = tmp_path / "out"
  first = scaling.run(config, out, progress=False)
  shutil.rmtree(root)
  capsys.readouterr()
  again = scaling.run(config, out, progress=False)
  assert capsys.readouterr().out.count(f"loaded from {out / 'scaling.json'}") == 3
  assert [r["final_rate"] for r in again["rows"]] == \
      [r["final_rate"] for r in first["rows"]]
  assert again["total_wall_time_s"] == first["total_wall_time_s"] == 15.0
  assert set(scaling.recorded_runs(out)) == {(m, 1) for m in scaling.METHODS}
  saved = json.loads((out / "scaling.json").read_text())
  banel = saved["rows"].pop(0)
  saved["stopped"] = [{"method": "banel", "epochs": 1, "label": "BaNEL (paper)",
                       "error": "AcceptanceRateError", "message": "no region left",
                       "settings": banel["settings"]}]
  (out / "scaling.json").write_text(json.dumps(saved))
  third = scaling.run(config, out, progress=False)
  assert [r["method"] for r in third["rows"]] == ["rnd", "pseudo_count"]
  assert third["stopped"][0]["message"] == "no region left"
  assert not (root / "banel_e1").exists()  # nothing ran
  assert scaling.recorded_runs(tmp_path / "nothing") == {}


def test_a_subset_fills_in_part_of_the_table(tmp_path, setup, no_training):
  """Sharding: ``--epochs`` / ``--methods`` subsets, then everything."""
  config = _three_seeds(tmp_path)
  root = tmp_path / "runs"
  for m in scaling.METHODS:
    for e in (1, 10):
      _fake_run(root, config, setup, m, e, [RATE0 * e] * 3)
  out = tmp_path / "out"
  part = scaling.run(config.replace(epochs=(10,), methods=("rnd",)), out,
                     progress=False)
  assert [(r["method"], r["epochs"]) for r in part["rows"]] == [("rnd", 10)]
  assert list(json.loads((out / "summary.json").read_text())["tasks"]) == [
      "addition_msb_e10"]
  full = scaling.run(config, out, progress=False)
  assert len(full["rows"]) == 6
  assert list(json.loads((out / "summary.json").read_text())["tasks"]) == [
      "addition_msb_e1", "addition_msb_e10"]


def test_refuses_a_run_made_with_other_settings(tmp_path, setup, no_training):
  config = _three_seeds(tmp_path).replace(epochs=(1,), methods=("banel",))
  other = config.replace(compare=config.compare.replace(seeds=(7,)))
  done = _fake_run(tmp_path / "runs", other, setup, "banel", 1, [0.0])
  before = done.read_text()
  with pytest.raises(RunDirError, match=r"banel_e1.*differing fields: seeds"):
    scaling.run(config, tmp_path / "out", progress=False)
  assert done.read_text() == before  # neither reused nor overwritten
  # a run of the same method at another E is another directory, another setting
  wrong_e = _fake_run(tmp_path / "runs2", config.replace(epochs=(2,)), setup,
                      "banel", 2, [0.0, 0.0, 0.0])
  os.rename(wrong_e.parent, tmp_path / "runs2" / "banel_e1")
  with pytest.raises(RunDirError, match="failure_epochs: saved 2, now 1"):
    scaling.run(config.replace(run_dir=str(tmp_path / "runs2")), tmp_path / "out",
                progress=False)


def test_the_reversed_order_target_has_its_own_task_ids(tmp_path, no_training):
  base = scaling.tiny_config()
  config = base.replace(epochs=(1,), methods=("banel",), run_dir=str(tmp_path / "r"),
                        compare=base.compare.replace(target="target"))
  lsb = compare.addition_setup(config.compare)
  rate0 = compare.shipped_pretrained_rate(config.compare)["rate"]
  assert rate0 != pytest.approx(RATE0)
  _fake_run(tmp_path / "r", config, lsb, "banel", 1, [2 * rate0])
  record = scaling.run(config, tmp_path / "out", progress=False)
  assert record["task"] == "addition_lsb"
  tasks = json.loads((tmp_path / "out" / "summary.json").read_text())["tasks"]
  assert list(tasks) == ["addition_lsb_e1"]
  assert tasks["addition_lsb_e1"]["methods"]["banel_paper"][
      "improvement_final"] == pytest.approx([2.0])


def test_a_run_that_stops_is_named_and_the_others_go_on(tmp_path, monkeypatch):
  from banel_jax.core.posterior import AcceptanceRateError
  config = scaling.tiny_config().replace(epochs=(1,), run_dir=str(tmp_path / "r"))
  monkeypatch.setattr(compare, "addition_setup",
                      lambda c: types.SimpleNamespace(name="addition"))
  calls = []

  def fake_run_method(name, setup, cfg, seeds, progress, run_dir=None,
                      recorded=None, load_only=False):
    if load_only:  # nothing finished earlier
      return None
    calls.append((name, cfg, run_dir))
    if name == "banel":
      err = AcceptanceRateError("no region left a sample")
      err.settings = {"method": name}
      raise err
    return {"final_success_rate": [RATE0], "best_success_rate": [RATE0],
            "wall_time_s": 2.0, "settings": {"method": name}}

  monkeypatch.setattr(compare, "run_method", fake_run_method)
  record = scaling.run(config, tmp_path / "out", progress=False)
  assert [c[0] for c in calls] == ["banel", "rnd", "pseudo_count"]
  assert calls[1][1] == config.compare_for("rnd", 1)
  assert calls[2][2] == str(tmp_path / "r" / "pseudo_count_e1")
  assert [r["method"] for r in record["rows"]] == ["rnd", "pseudo_count"]
  (stop,) = record["stopped"]
  assert (stop["method"], stop["epochs"], stop["error"]) == (
      "banel", 1, "AcceptanceRateError")
  readme = (tmp_path / "out" / "README.md").read_text()
  assert "**Stopped**" in readme and "BaNEL (paper) at E = 1" in readme
  task = json.loads((tmp_path / "out" / "summary.json").read_text())["tasks"][
      "addition_msb_e1"]
  assert list(task["methods"]) == ["rnd", "pseudo_counts"]


def test_pool_joins_studies_on_disjoint_seeds(tmp_path, setup, no_training):
  studies = []
  for name, seeds, factor in (("a", (0, 1, 2), 1.0), ("b", (3, 4), 10.0)):
    config = _three_seeds(tmp_path, f"runs_{name}", seeds)
    # pseudo-counts in one study only: not pooled
    methods = scaling.METHODS if name == "a" else ("banel", "rnd")
    config = config.replace(methods=methods)
    for m in methods:
      for e in (1, 10):
        _fake_run(tmp_path / f"runs_{name}", config, setup, m, e,
                  [RATE0 * factor * (s + 1) for s in range(len(seeds))])
    scaling.run(config, tmp_path / name, progress=False)
    studies.append(str(tmp_path / name))
  out = tmp_path / "pooled"
  pooled = scaling.run(scaling.default_config().replace(pool=tuple(studies)), out,
                       progress=False)
  assert pooled["seeds"] == [0, 1, 2, 3, 4]
  assert [(r["method"], r["epochs"]) for r in pooled["rows"]] == [
      ("banel", 1), ("rnd", 1), ("banel", 10), ("rnd", 10)]
  row = pooled["rows"][0]
  assert row["seeds"] == [0, 1, 2, 3, 4]
  assert row["improvement_final"]["per_seed"] == pytest.approx([1, 2, 3, 10, 20])
  assert row["improvement_final"]["median"] == pytest.approx(3.0)
  assert row["wall_time_s_per_study"] == [1.0, 1.0]
  assert [p["seeds"] for p in pooled["pooled_from"]] == [[0, 1, 2], [3, 4]]
  task = json.loads((out / "summary.json").read_text())["tasks"]["addition_msb_e1"]
  assert task["methods"]["rnd"]["seeds"] == [0, 1, 2, 3, 4]
  assert "Pooled" in (out / "README.md").read_text()
  assert (out / "scaling.png").exists()
  # the same seeds twice, other settings, a missing study: refused
  with pytest.raises(ExperimentError, match=r"seeds \[0, 1, 2\] of .* another study"):
    scaling.run(scaling.default_config().replace(pool=(studies[0], str(out))),
                tmp_path / "x", progress=False)
  other = _three_seeds(tmp_path, "runs_c", (5,))
  other = other.replace(epochs=(1,), methods=("rnd",), compare=other.compare.replace(
      run=other.compare.run.replace(n_eval=512)))
  _fake_run(tmp_path / "runs_c", other, setup, "rnd", 1, [RATE0])
  scaling.run(other, tmp_path / "c", progress=False)
  with pytest.raises(ExperimentError, match=r"other settings.*run\.n_eval"):
    scaling.run(scaling.default_config().replace(
        pool=(studies[0], str(tmp_path / "c"))), tmp_path / "x", progress=False)
  with pytest.raises(ExperimentError, match="does not exist"):
    scaling.run(scaling.default_config().replace(pool=(str(tmp_path / "none"),)),
                tmp_path / "x", progress=False)


@pytest.mark.slow
def test_command_line_runs_the_tiny_study_and_reuses_it(tmp_path):
  # One method at two epoch values: compare's own tests run every method of the
  # tiny preset, and each (method, epochs) pair compiles its programs anew.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "study"
  command = [sys.executable, "-m", "banel_jax", "scaling", "--preset", "tiny",
             "--methods", "rnd", "--no-progress", "--out", str(out)]
  subprocess.run(command, env=env, check=True, capture_output=True)
  tiny = scaling.tiny_config()
  saved = json.loads((out / "scaling.json").read_text())
  assert saved["command"].startswith("banel scaling --preset tiny --methods rnd")
  assert saved["run_dir"] == str(out / "runs")
  pairs = [(m, e) for e in tiny.epochs for m in ("rnd",)]
  assert [(r["method"], r["epochs"]) for r in saved["rows"]] == pairs
  assert not saved["stopped"] and not any(r["loaded"] for r in saved["rows"])
  results = {}
  for method, e in pairs:
    run_dir = out / "runs" / scaling.run_name(method, e)
    result = json.loads((run_dir / harness.RESULT_FILE).read_text())
    assert result["result"]["nre_spent"] == [tiny.compare.run.nre_budget]
    section, field = scaling.KNOBS[method].split(".")
    assert result["settings"]["sections"][section][field] == e
    results[run_dir] = (run_dir / harness.RESULT_FILE).stat().st_mtime_ns, \
        (run_dir / "ledger.jsonl").stat().st_size
  summary = json.loads((out / "summary.json").read_text())
  assert list(summary["tasks"]) == [f"addition_msb_e{e}" for e in tiny.epochs]
  for task in summary["tasks"].values():
    assert list(task["methods"]) == ["rnd"]
    assert all(m["seeds"] == [0] for m in task["methods"].values())
  assert (out / "scaling.png").stat().st_size > 0
  readme = (out / "README.md").read_text()
  assert "<!-- observations:start -->" in readme
  # the same command again: every run is loaded, nothing is asked or trained
  again = subprocess.run(command, env=env, check=True, capture_output=True,
                         text=True)
  assert again.stdout.count("finished earlier, loaded from") == len(pairs)
  for run_dir, (mtime, ledger) in results.items():
    assert (run_dir / harness.RESULT_FILE).stat().st_mtime_ns == mtime
    assert (run_dir / "ledger.jsonl").stat().st_size == ledger
  resaved = json.loads((out / "scaling.json").read_text())
  assert all(r["loaded"] for r in resaved["rows"])
  assert [r["final_rate"] for r in resaved["rows"]] == \
      [r["final_rate"] for r in saved["rows"]]
  assert np.isclose(resaved["total_wall_time_s"], saved["total_wall_time_s"])
