"""``research/seed_pool.py`` on attack.json files made here."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research import seed_pool  # noqa: E402

_CONFIG = {"mode": "distilled", "failure_epochs": 10, "nre_budget": 7500}


def _attack_json(folder, seeds, final, best=None, epochs=10, rate=6e-4):
  folder.mkdir(parents=True)
  record = {"seeds": seeds, "improvement_final": final,
            "improvement_best": best if best is not None else final,
            "pretrained": {"rate": rate}, "support_filter": True,
            "banel_config": dict(_CONFIG, failure_epochs=epochs),
            "task_config": {"answer_order": "msb"}}
  (folder / "attack.json").write_text(json.dumps(record))
  return str(folder)


def test_pooled_hits_and_table_probability(tmp_path):
  a = _attack_json(tmp_path / "a", [0, 1, 2], [0.0, 0.0, 1000.0], [1.0, 2.0, 1000.0])
  b = _attack_json(tmp_path / "b", [3, 4], [0.0, 0.0])
  out = tmp_path / "out"
  seed_pool.main(["--group", f"g={a},{b}", "--draws", "100000", "--out", str(out)])
  s = json.loads((out / "seed_pool.json").read_text())["groups"]["g"]
  assert s["n_seed_runs"] == 5 and s["hits"] == 1
  assert s["final_mean"] == pytest.approx(200.0)
  assert s["best_mean"] == pytest.approx(200.6)
  assert s["final_median"] == 0.0
  # A 5-seed table reaches 50x exactly when it holds the 1000x seed at least once.
  assert s["p_table_reaches_bar"] == pytest.approx(1 - 0.8**5, abs=0.01)
  lo, hi = s["hit_rate_ci95"]
  assert lo < 0.2 < hi
  assert [(r["seed"], r["final"]) for r in s["runs"]] == [
      (0, 0.0), (1, 0.0), (2, 1000.0), (3, 0.0), (4, 0.0)]
  assert (out / "seed_pool.png").stat().st_size > 0


def test_a_single_hit_below_the_bar_per_table(tmp_path):
  # 100x is a hit but a 5-seed table with one of it averages 20x < 50x:
  # it takes three such seeds (60x), probability P(Binomial(5, 0.5) >= 3) = 0.5.
  a = _attack_json(tmp_path / "a", [0, 1], [0.0, 100.0])
  out = tmp_path / "out"
  seed_pool.main(["--group", f"g={a}", "--draws", "100000", "--out", str(out)])
  s = json.loads((out / "seed_pool.json").read_text())["groups"]["g"]
  assert s["hits"] == 1
  assert s["p_table_reaches_bar"] == pytest.approx(0.5, abs=0.01)


def test_groups_are_compared_with_the_first(tmp_path):
  a = _attack_json(tmp_path / "a", list(range(6)), [0.0] * 6)
  b = _attack_json(tmp_path / "b", list(range(6)), [500.0] * 6, epochs=30)
  out = tmp_path / "out"
  seed_pool.main(["--group", f"base={a}", "--group", f"e30={b}", "--draws", "1000",
                  "--out", str(out)])
  record = json.loads((out / "seed_pool.json").read_text())
  c = record["against_base"]["e30"]
  assert c["fisher_hits_p"] == pytest.approx(1 / 462)  # 1 / C(12, 6)
  assert c["mannwhitney_final_p"] < 0.01
  assert record["groups"]["e30"]["p_table_reaches_bar"] == 1.0
  assert record["groups"]["base"]["p_table_reaches_bar"] == 0.0


def test_mismatched_configurations_are_refused(tmp_path):
  a = _attack_json(tmp_path / "a", [0], [1.0])
  b = _attack_json(tmp_path / "b", [1], [1.0], epochs=30)
  with pytest.raises(SystemExit, match="banel_config.failure_epochs"):
    seed_pool.main(["--group", f"g={a},{b}", "--out", str(tmp_path / "out")])
  c = _attack_json(tmp_path / "c", [1], [1.0], rate=2e-4)
  with pytest.raises(SystemExit, match="pretrained rate"):
    seed_pool.main(["--group", f"g={a},{c}", "--out", str(tmp_path / "out")])


def test_bad_arguments_name_the_problem(tmp_path):
  with pytest.raises(SystemExit, match="no attack.json"):
    seed_pool.main(["--group", f"g={tmp_path}", "--out", str(tmp_path / "out")])
  with pytest.raises(SystemExit, match="NAME=PATH"):
    seed_pool.main(["--group", "nothing", "--out", str(tmp_path / "out")])
  (tmp_path / "x.json").write_text("{}")
  with pytest.raises(SystemExit, match="missing seeds"):
    seed_pool.main(["--group", f"g={tmp_path / 'x.json'}", "--out",
                    str(tmp_path / "out")])


def test_a_field_added_later_at_its_default_matches_its_absence(tmp_path):
  # attack.json files written before BanelConfig.success_bank_distinct existed
  # lack it; later ones record it at its default, False: the same run.
  old = _attack_json(tmp_path / "old", [0], [1.0])
  new = _attack_json(tmp_path / "new", [1], [3.0])
  on = _attack_json(tmp_path / "on", [2], [3.0])
  for folder, value in (("new", False), ("on", True)):
    path = tmp_path / folder / "attack.json"
    record = json.loads(path.read_text())
    record["banel_config"]["success_bank_distinct"] = value
    path.write_text(json.dumps(record))
  out = tmp_path / "out"
  seed_pool.main(["--group", f"g={old},{new}", "--draws", "10", "--out", str(out)])
  s = json.loads((out / "seed_pool.json").read_text())["groups"]["g"]
  assert s["n_seed_runs"] == 2 and s["final_mean"] == pytest.approx(2.0)
  with pytest.raises(SystemExit, match="banel_config.success_bank_distinct"):
    seed_pool.main(["--group", f"g={old},{on}", "--out", str(tmp_path / "out2")])
  # A field that is not a later addition still has to match when absent.
  record = json.loads((tmp_path / "new" / "attack.json").read_text())
  del record["banel_config"]["failure_epochs"]
  (tmp_path / "new" / "attack.json").write_text(json.dumps(record))
  with pytest.raises(SystemExit, match="banel_config.failure_epochs"):
    seed_pool.main(["--group", f"g={old},{new}", "--out", str(tmp_path / "out3")])


def test_a_baseline_pools_with_itself_and_never_with_banel(tmp_path):
  def baseline(name, seeds, final, weight=100.0):
    folder = pathlib.Path(_attack_json(tmp_path / name, seeds, final))
    record = json.loads((folder / "attack.json").read_text())
    record.update(method="self-imitation", banel_config=None,
                  method_config={"bank_size": 256, "success_weight": weight})
    (folder / "attack.json").write_text(json.dumps(record))
    return str(folder)

  a, b = baseline("a", [0], [10.0]), baseline("b", [1], [30.0])
  out = tmp_path / "out"
  seed_pool.main(["--group", f"si={a},{b}", "--draws", "10", "--out", str(out)])
  s = json.loads((out / "seed_pool.json").read_text())["groups"]["si"]
  assert s["n_seed_runs"] == 2 and s["final_mean"] == pytest.approx(20.0)
  assert s["method"] == "self-imitation" and s["banel_config"] is None
  assert s["method_config"]["success_weight"] == 100.0
  # A BaNEL file written before the method field existed: refused all the same.
  old = _attack_json(tmp_path / "old", [2], [1.0])
  with pytest.raises(SystemExit, match="differ in banel_config"):
    seed_pool.main(["--group", f"g={a},{old}", "--out", str(tmp_path / "o2")])
  heavy = baseline("heavy", [3], [1.0], weight=10.0)
  with pytest.raises(SystemExit, match="method_config.success_weight"):
    seed_pool.main(["--group", f"g={a},{heavy}", "--out", str(tmp_path / "o3")])


def test_the_first_success_is_read_from_the_metrics(tmp_path):
  a = pathlib.Path(_attack_json(tmp_path / "a", [0, 1, 2], [900.0, 0.0, 60.0]))
  rounds = [{"round": 0, "nre": [0, 0, 0], "success_rate": [0.0, 0.0, 0.0]},
            {"round": 1, "nre": [500, 500, 500], "n_successes": [0, 0, 0]},
            {"round": 2, "nre": [1000, 1000, 1000], "n_successes": [2, 0, 0]},
            {"round": 3, "nre": [1500, 1500, 1500], "n_successes": [0, 0, 1]},
            {"round": 4, "nre": [2000, 2000, 2000], "n_successes": [5, 0, 3]}]
  (a / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
  b = _attack_json(tmp_path / "b", [3], [1.0])  # no metrics.jsonl beside it
  out = tmp_path / "out"
  seed_pool.main(["--group", f"g={a},{b}", "--draws", "10", "--out", str(out)])
  s = json.loads((out / "seed_pool.json").read_text())["groups"]["g"]
  assert [r["nre_first_success"] for r in s["runs"]] == [1000, None, 1500,
                                                         "no metrics"]
  assert s["first_success"] == {"n_with_metrics": 3, "n_found": 2,
                                "median_nre_first_success": 1250.0}
  rounds[2]["n_successes"] = [2, 0]
  (a / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
  with pytest.raises(SystemExit, match="2 seeds in round 2, the attack.json has 3"):
    seed_pool.main(["--group", f"g={a}", "--out", str(tmp_path / "o2")])
