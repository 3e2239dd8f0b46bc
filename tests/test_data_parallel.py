"""One batch split over several devices (banel_jax.runtime.data_parallel)."""

import json
import pathlib
import subprocess
import sys

import jax
import pytest

from banel_jax.runtime import data_parallel as dp

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_four_devices_match_one(four_cpu_devices_env):
  # 4 CPU devices in a child process: the split sampler draws distinct rows on
  # every device, the split scorer and one full-batch training step equal the
  # one-device ones, and steps with weight on one device only, or none at all,
  # behave as on one device.
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "data_parallel_worker.py")],
                        env=four_cpu_devices_env, check=True, capture_output=True,
                        text=True)
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["device_count"] == 4 and r["mesh"] == 4
  assert r["sample_shape"] == [16, 6] and r["sample_devices"] == 4
  assert r["distinct_quarters"] == 4 and r["sample_finite"]
  assert r["score_diff"] < 1e-5
  assert r["score13_shape"] == [13] and r["score13_diff"] < 1e-5
  assert r["param_change"] > 1e-3  # the step moved the params...
  assert r["fit_param_diff"] < 1e-5 and r["fit_loss_diff"] < 1e-5  # ...as one device
  assert r["fit0_param_diff"] < 1e-5
  assert r["zero_weight_step"] == 0 and r["zero_weight_change"] == 0.0
  assert r["epochs_losses_shape"] == [3, 2] and r["epochs_steps"] == 6
  assert r["epochs_finite"]
  e = r["errors"]
  assert "n=10 must be a multiple of the mesh's 4 devices" in e["sample"]
  assert "batch_size=10 must be a multiple" in e["fit_batch"]
  assert "number of samples=14 must be a multiple" in e["fit_rows"]


def test_an_empty_device_list_is_refused():
  with pytest.raises(ValueError, match="devices is empty"):
    dp.data_mesh([])
  assert dp.data_mesh().devices.size == jax.device_count()
