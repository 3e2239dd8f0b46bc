"""``scripts/bench_round.py``: every part of a round is timed, and the estimates add up."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import bench_round

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_round_breakdown(tmp_path):
  out = tmp_path / "round.json"
  bench_round.main(["--config", "tiny", "--seeds", "2", "--failure-epochs", "1",
                    "--repeats", "1", "--train-microbatch", "0", "16",
                    "--region-bank", "3",
                    "--out", str(out)])
  report = json.loads(out.read_text())
  parts = report["seconds"]
  for name in ("sample_paid", "oracle", "calibration", "distill_sample",
               "region_test"):
    assert parts[name] > 0, name
  for name in ("failure_fit", "distill_fit"):
    assert set(parts[name]) == {"0", "16"} and min(parts[name].values()) > 0
  assert report["banel"]["samples_per_round"] == 64  # the tiny config's shapes
  assert report["banel"]["failure_epochs"] == 1
  bank = report["region_bank"]
  assert bank["regions"] == 3 and 0.5 < bank["share_inside"] < 1.0  # ~1 - 1/8
  assert bank["remaining_only"] > 0 and bank["every_sample"] > 0
  k = 128 // 64  # the tiny budget's rounds
  for m, est in report["round_seconds"].items():
    assert est[f"{k}_regions"] == pytest.approx(
        est["1_region"] + (k - 1) * parts["region_test"])
    assert est["1_region"] > parts["failure_fit"][m] + parts["distill_fit"][m]


def test_help_and_bad_values():
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_round.py"),
                        "--help"], capture_output=True, text=True, check=True).stdout
  for option in ("--config", "--seeds", "--failure-epochs", "--train-microbatch",
                 "--region-bank", "--repeats", "--out"):
    assert option in out
  with pytest.raises(SystemExit, match="seeds"):
    bench_round.main(["--seeds", "0"])
