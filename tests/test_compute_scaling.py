"""``banel scaling`` (:mod:`banel_jax.experiments.scaling`): gathering finished
attack runs without rerunning them, pooling studies, and (slow) a tiny study
through the command line.

The attack runs themselves are too slow for most tests; here each epoch value's
``attack.json`` is written by the test, recording the attack config the study
would run, so the study must reuse it and aggregate it correctly, and must not
reuse one made with another config.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from banel_jax.experiments import scaling
from banel_jax.experiments.registry import ExperimentError, commands


def _fake_run(out, config, epochs, improvements, attack_config=None):
  d = out / f"epochs_{epochs}"
  d.mkdir(parents=True)
  imp = np.asarray(improvements)
  cfg = attack_config if attack_config is not None else config.attack_for(epochs)
  (d / "attack.json").write_text(json.dumps({
      "config": scaling._comparable(cfg),
      "improvement_final": imp.tolist(), "improvement_best": (imp * 2).tolist(),
      "final_success_rate": (imp * 1e-4).tolist(), "pretrained": {"rate": 1e-4},
      "wall_time_s": 1.0}))


def test_registered_with_presets_whose_defaults_run():
  command = commands()["scaling"]
  assert command.config_cls is scaling.ScalingConfig
  assert set(command.presets) == {"default", "paper", "tiny"}
  default = scaling.default_config()
  assert default.epochs == (1, 3, 10, 30)
  a = default.attack
  # the paper's study: the harder variant, no pattern analysis
  assert not a.allow_leading_zeros and not a.analysis
  assert (a.seeds, a.banel.nre_budget) == ((0, 1, 2), 2500)
  assert a.banel.train_microbatch == "auto"
  paper = scaling.paper_config().attack
  assert (len(paper.seeds), paper.banel.nre_budget) == (5, 7500)


def test_reuses_finished_runs_and_aggregates(tmp_path):
  out = tmp_path / "scaling"
  config = scaling.tiny_config().replace(epochs=(1, 10))
  _fake_run(out, config, 1, [1.0, 2.0, 6.0])
  _fake_run(out, config, 10, [4.0, 4.0, 10.0])
  res = scaling.run(config, out, progress=False)
  saved = json.loads((out / "scaling.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(res["rows"]))
  assert [r["failure_epochs"] for r in saved["rows"]] == [1, 10]
  first, second = saved["rows"]
  assert first["improvement_final"]["mean"] == pytest.approx(3.0)
  assert first["improvement_final"]["median"] == pytest.approx(2.0)
  assert second["improvement_best"]["per_seed"] == [8.0, 8.0, 20.0]
  assert not saved["leading_zeros_allowed"]
  assert saved["config"]["epochs"] == [1, 10]
  assert (out / "scaling.png").stat().st_size > 0


def test_each_epoch_value_runs_the_attack_with_its_epochs(tmp_path):
  config = scaling.default_config().replace(run_dir=str(tmp_path / "runs"))
  one = config.attack_for(5)
  assert one.banel.failure_epochs == 5
  assert one.run_dir == os.path.join(str(tmp_path / "runs"), "epochs_5")
  assert one.replace(banel=config.attack.banel, run_dir=None) == config.attack
  assert scaling.default_config().attack_for(3).run_dir is None


def test_rejects_bad_settings():
  base = scaling.default_config()
  with pytest.raises(ExperimentError, match="epochs=.*integers >= 1"):
    base.replace(epochs=(0,))
  with pytest.raises(ExperimentError, match="names a value twice"):
    base.replace(epochs=(3, 3))
  with pytest.raises(ExperimentError, match="set run_dir"):
    base.replace(attack=base.attack.replace(run_dir="x"))
  with pytest.raises(ExperimentError, match="method must be 'banel'"):
    base.replace(attack=base.attack.replace(method="self-imitation"))


def test_reruns_a_value_made_with_another_config(tmp_path, monkeypatch):
  out = tmp_path / "scaling"
  config = scaling.tiny_config().replace(epochs=(3,))
  other = config.attack_for(3).replace(seeds=(7,))
  _fake_run(out, config, 3, [1.0], attack_config=other)
  calls = []

  def fake_run(cfg, folder, progress):
    calls.append((cfg, folder))
    raise RuntimeError("the attack would run here")

  monkeypatch.setattr(scaling.attack_experiment, "run", fake_run)
  with pytest.raises(RuntimeError, match="would run"):
    scaling.run(config, out, progress=False)
  assert len(calls) == 1
  assert calls[0][0] == config.attack_for(3) and calls[0][1] == out / "epochs_3"
  assert not (out / "epochs_3" / "attack.json").exists()  # the stale one is gone


def test_pool_joins_studies_on_other_seeds(tmp_path):
  """``pool``: per-seed values of the shared epoch values, concatenated."""
  def study(name, seeds, rows, nre=2500):
    d = tmp_path / name
    d.mkdir()
    (d / "scaling.json").write_text(json.dumps({
        "command": f"banel scaling --attack.seeds {seeds}",
        "seeds": seeds, "nre_budget": nre, "leading_zeros_allowed": False,
        "rows": [{"failure_epochs": e,
                  "improvement_final": {"per_seed": fin},
                  "improvement_best": {"per_seed": [2 * v for v in fin]},
                  "final_success_rate": [v * 1e-4 for v in fin],
                  "pretrained_rate": 1e-4, "wall_time_s": 5.0}
                 for e, fin in rows.items()]}))
    return str(d)
  a = study("a", 3, {1: [0.0, 3.0, 0.0], 10: [1.0, 2.0, 3.0]})
  b = study("b", 2, {1: [6.0, 1.0], 10: [5.0, 4.0], 100: [9.0, 9.0]})
  out = tmp_path / "pooled"
  scaling.run(scaling.default_config().replace(pool=(a, b)), out, progress=False)
  pooled = json.loads((out / "scaling.json").read_text())
  assert pooled["seeds"] == 5 and [r["failure_epochs"] for r in pooled["rows"]] == [1, 10]
  row = pooled["rows"][1]
  assert row["improvement_final"]["per_seed"] == [1.0, 2.0, 3.0, 5.0, 4.0]
  assert row["improvement_final"]["mean"] == pytest.approx(3.0)
  assert row["improvement_best"]["per_seed"] == [2.0, 4.0, 6.0, 10.0, 8.0]
  assert row["final_success_rate"] == pytest.approx([1e-4, 2e-4, 3e-4, 5e-4, 4e-4])
  assert [p["seeds"] for p in pooled["pooled_from"]] == [3, 2]
  assert (out / "scaling.png").exists()
  other = study("c", 2, {1: [1.0, 1.0]}, nre=7500)
  with pytest.raises(ExperimentError, match="nre_budget"):
    scaling.run(scaling.default_config().replace(pool=(a, other)), out,
                progress=False)
  with pytest.raises(ExperimentError, match="does not exist"):
    scaling.run(scaling.default_config().replace(pool=(str(tmp_path / "none"),)),
                out, progress=False)


@pytest.mark.slow
def test_command_line_runs_a_tiny_study_and_reuses_it(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "study"
  command = [sys.executable, "-m", "banel_jax", "scaling", "--preset", "tiny",
             "--epochs", "1", "--no-progress", "--out", str(out)]
  subprocess.run(command, env=env, check=True, capture_output=True)
  saved = json.loads((out / "scaling.json").read_text())
  assert saved["command"].startswith("banel scaling --preset tiny")
  (row,) = saved["rows"]
  assert row["failure_epochs"] == 1 and len(row["improvement_final"]["per_seed"]) == 1
  attack = json.loads((out / "epochs_1" / "attack.json").read_text())
  assert attack["banel_config"]["failure_epochs"] == 1
  assert attack["nre_spent"] == [128]
  again = subprocess.run(command, env=env, check=True, capture_output=True,
                         text=True)
  assert "epochs 1: reusing" in again.stdout
