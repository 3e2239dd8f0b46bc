"""``scripts/compute_scaling.py``: gathering finished attack runs, without rerunning.

The attack runs themselves are too slow for the suite (the tiny end-to-end attack
is in ``test_attack_e2e.py``); here each epoch value's ``attack.json`` is written
by the test, stamped with the arguments the script would pass, so the script must
reuse it and aggregate it correctly — and must not reuse one made with other
arguments.
"""

import json
import pathlib
import shlex
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from scripts import compute_scaling  # noqa: E402


def _fake_run(out, epochs, argv, improvements):
  d = out / f"epochs_{epochs}"
  d.mkdir(parents=True)
  imp = np.asarray(improvements)
  (d / "argv.json").write_text(json.dumps(argv))
  (d / "attack.json").write_text(json.dumps({
      "improvement_final": imp.tolist(), "improvement_best": (imp * 2).tolist(),
      "final_success_rate": (imp * 1e-4).tolist(), "pretrained": {"rate": 1e-4},
      "wall_time_s": 1.0}))


def test_reuses_finished_runs_and_aggregates(tmp_path):
  out = tmp_path / "scaling"
  argv = ["--epochs", "1", "10", "--seeds", "3", "--out", str(out)]
  args = compute_scaling.parse_args(argv)
  _fake_run(out, 1, compute_scaling.attack_argv(args, 1) + ["--out",
                                                           str(out / "epochs_1")],
            [1.0, 2.0, 6.0])
  _fake_run(out, 10, compute_scaling.attack_argv(args, 10) + ["--out",
                                                             str(out / "epochs_10")],
            [4.0, 4.0, 10.0])
  compute_scaling.main(argv)
  res = json.loads((out / "scaling.json").read_text())
  assert res["command"] == shlex.join(["python", "scripts/compute_scaling.py", *argv])
  assert [r["failure_epochs"] for r in res["rows"]] == [1, 10]
  first, second = res["rows"]
  assert first["improvement_final"]["mean"] == pytest.approx(3.0)
  assert first["improvement_final"]["median"] == pytest.approx(2.0)
  assert second["improvement_best"]["per_seed"] == [8.0, 8.0, 20.0]
  assert not res["leading_zeros_allowed"]
  assert (out / "scaling.png").stat().st_size > 0


def test_attack_arguments_follow_the_options():
  args = compute_scaling.parse_args(["--seeds", "2", "--nre-budget", "1000",
                                     "--leading-zeros", "--", "--reset"])
  argv = compute_scaling.attack_argv(args, 5)
  assert argv[argv.index("--failure-epochs") + 1] == "5"
  assert argv[argv.index("--nre-budget") + 1] == "1000"
  assert "--no-leading-zeros" not in argv and argv[-1] == "--reset"
  strict = compute_scaling.attack_argv(compute_scaling.parse_args([]), 1)
  assert "--no-leading-zeros" in strict


def test_rejects_bad_options():
  with pytest.raises(SystemExit, match="epochs"):
    compute_scaling.main(["--epochs", "0"])


def test_reruns_a_value_made_with_other_arguments(tmp_path, monkeypatch):
  out = tmp_path / "scaling"
  _fake_run(out, 3, ["--some", "--other", "--arguments"], [1.0])
  calls = []

  def fake_run(cmd, check):
    calls.append(cmd)
    raise RuntimeError("attack.py would run here")

  monkeypatch.setattr(compute_scaling.subprocess, "run", fake_run)
  with pytest.raises(RuntimeError, match="would run"):
    compute_scaling.main(["--epochs", "3", "--out", str(out)])
  assert len(calls) == 1 and "--failure-epochs" in calls[0]
  assert not (out / "epochs_3" / "attack.json").exists()  # the stale one is gone


def test_pool_joins_studies_on_other_seeds(tmp_path):
  """``--pool``: per-seed values of the shared epoch values, concatenated."""
  def study(name, seeds, rows, nre=2500):
    d = tmp_path / name
    d.mkdir()
    (d / "scaling.json").write_text(json.dumps({
        "command": f"python scripts/compute_scaling.py --seeds {seeds}",
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
  compute_scaling.main(["--pool", a, b, "--out", str(out)])
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
  with pytest.raises(SystemExit, match="nre_budget"):
    compute_scaling.main(["--pool", a, other, "--out", str(out)])
