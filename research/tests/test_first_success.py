"""``research/first_success.py`` on attack outputs made here."""

import json
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from research import first_success  # noqa: E402

_BUDGET, _M = 2000, 500


def _attack(folder, seeds, found, final=None, rate=3e-4, method="banel",
            regions=True, evals=None):
  """An attack output: ``found[s][r]`` is seed s's training successes in round
  r + 1 (4 rounds of 500); evaluations at rounds 0 and 2, ``evals[s]`` (two
  rates) or a default."""
  folder.mkdir(parents=True)
  n = len(seeds)
  run = {"nre_budget": _BUDGET, "samples_per_round": _M}
  record = {"seeds": seeds, "improvement_final": final or [1.0] * n,
            "improvement_best": final or [1.0] * n, "pretrained": {"rate": rate},
            "task_config": {"answer_order": "lsb"}, "nre_spent": [_BUDGET] * n,
            "method": method}
  if method == "banel":
    record["banel_config"] = dict(run, failure_epochs=10, tau_mode=(
        "calibrated" if regions else "factor"), filter_factor=(
            2.0 if regions else 1e30))
  else:
    record.update(banel_config=None, run_config=run,
                  method_config={"success_weight": 100.0})
  (folder / "attack.json").write_text(json.dumps(record))
  evals = evals or [[2e-4, 3e-4]] * n
  rows = [{"round": 0, "nre": [0] * n, "success_rate": [e[0] for e in evals]}]
  for r in range(4):
    row = {"round": r + 1, "nre": [_M * (r + 1)] * n,
           "n_successes": [found[s][r] for s in range(n)]}
    if r + 1 == 2:
      row["success_rate"] = [e[1] for e in evals]
    rows.append(row)
  (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(folder)


def _run(tmp_path, *groups):
  out = tmp_path / "out"
  first_success.main([a for g in groups for a in ("--group", g)] + ["--out", str(out)])
  return json.loads((out / "first_success.json").read_text()), out


def test_first_success_censoring_and_shares(tmp_path):
  a = _attack(tmp_path / "a", [0, 1, 2], [[0, 1, 5, 0], [0, 0, 0, 0], [2, 0, 0, 0]],
              final=[900.0, 1.0, 3000.0])
  rec, out = _run(tmp_path, f"g={a}")
  runs = rec["seed_runs"]["g"]
  assert [(r["seed"], r["first"], r["censored_at"]) for r in runs] == [
      (0, 1000, 2000), (1, None, 2000), (2, 500, 2000)]
  s = rec["groups"]["g"]
  assert (s["n_distinct"], s["n_found"]) == (3, 2)
  assert s["median_nre_first_success_among_found"] == 750.0
  assert s["share_found_by_nre"] == {"0": 0.0, "500": pytest.approx(1 / 3),
                                     "1000": pytest.approx(2 / 3),
                                     "1500": pytest.approx(2 / 3),
                                     "2000": pytest.approx(2 / 3)}
  assert (out / "first_success.png").stat().st_size > 0


def test_identical_runs_count_once_and_different_ones_twice(tmp_path):
  found = [[0, 1, 0, 0], [0, 0, 0, 0]]
  a = _attack(tmp_path / "a", [0, 1], found)
  copy = tmp_path / "copy"
  shutil.copytree(a, copy)  # the same run again (e.g. another bank size)
  # seed 0 again, same first success, but an evaluation differs: another draw
  c = _attack(tmp_path / "c", [0], [found[0]], evals=[[2e-4, 4e-4]])
  rec, _ = _run(tmp_path, f"g={a},{copy},{c}")
  s = rec["groups"]["g"]
  assert s["n_seed_runs"] == 5
  assert s["n_distinct"] == 3 and s["n_found"] == 2


def test_groups_compared_by_log_rank_and_configs_listed(tmp_path):
  pattern = [[1, 0, 0, 0]] * 3 + [[0, 1, 0, 0]] * 2 + [[0, 0, 1, 0]] * 2 + [
      [0, 0, 0, 0]]
  early = _attack(tmp_path / "early", list(range(8)), pattern)
  late = _attack(tmp_path / "late", list(range(8)),
                 [[0, 0, 0, 1]] * 2 + [[0, 0, 0, 0]] * 6,
                 method="self-imitation", regions=False)
  same = _attack(tmp_path / "same", list(range(10, 18)), pattern)
  never = _attack(tmp_path / "never", list(range(20, 28)), [[0, 0, 0, 0]] * 8)
  rec, _ = _run(tmp_path, f"early={early}", f"late={late}", f"same={same}")
  g = rec["groups"]
  assert g["late"]["logrank_p_vs_first"] < 0.01
  assert g["same"]["logrank_p_vs_first"] == pytest.approx(1.0)
  # no event in either group: no test, recorded as None (not NaN)
  rec, _ = _run(tmp_path, f"never={never}", f"again={never}")
  assert rec["groups"]["again"]["logrank_p_vs_first"] is None
  assert list(g["early"]["configs"]) == ["BaNEL, regions, 10 failure epochs"]
  assert list(g["late"]["configs"]) == ["self-imitation (weight 100)"]


def test_runs_that_do_not_pool_are_refused(tmp_path):
  a = _attack(tmp_path / "a", [0], [[0, 0, 0, 0]])
  b = _attack(tmp_path / "b", [1], [[0, 0, 0, 0]], rate=5e-4)
  with pytest.raises(SystemExit, match="pretrained rate"):
    _run(tmp_path, f"g={a},{b}")
  with pytest.raises(SystemExit, match="pretrained_rate"):
    _run(tmp_path, f"g={a}", f"h={b}")
  with pytest.raises(SystemExit, match="no metrics.jsonl"):
    (tmp_path / "a" / "metrics.jsonl").unlink()
    _run(tmp_path, f"g={a}")


def test_the_rate_before_the_first_success(tmp_path):
  # evaluations at NRE 0 and 1,000; seed 0 finds a success at 1,000 (so its
  # evaluation there is not "before"), seed 1 never does
  a = _attack(tmp_path / "a", [0, 1], [[0, 1, 0, 0], [0, 0, 0, 0]],
              evals=[[2e-4, 9e-4], [4e-4, 1e-4]])
  rec, _ = _run(tmp_path, f"g={a}")
  before = rec["groups"]["g"]["rate_before_first_success"]
  assert before == {"0": {"n": 2, "mean": pytest.approx(3e-4)},
                    "1000": {"n": 1, "mean": pytest.approx(1e-4)}}
