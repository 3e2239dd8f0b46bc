"""``scripts/bench_microbatch.py``: a tiny run writes both variants and the speed-up."""

import json

import pytest

from scripts import bench_microbatch as bench


def test_tiny_run_writes_both_variants(tmp_path):
  out = tmp_path / "bm.json"
  bench.main(["--tiny", "--only", "split_log_prob", "--batch", "32",
              "--microbatch", "8", "--rounds", "1", "--calls", "1",
              "--out", str(out)])
  report = json.loads(out.read_text())
  times = report["seconds"]["split_log_prob"]
  assert list(times) == ["split", "unsplit"] and min(times.values()) > 0
  assert report["speedup"]["split_log_prob"] == pytest.approx(
      times["unsplit"] / times["split"])


def test_bad_arguments_are_refused():
  with pytest.raises(SystemExit, match="must divide"):
    bench.main(["--batch", "100", "--microbatch", "32"])
  with pytest.raises(SystemExit, match=">= 1"):
    bench.main(["--rounds", "0"])
