"""Seeds sharded over several devices (banel_jax.runtime.sharding and the runner)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from banel_jax.runtime import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_one_device_or_no_even_split_means_no_mesh():
  d = jax.devices()[0]
  assert sharding.seed_mesh(4, devices=[d]) is None
  x = jnp.zeros((4, 2))
  assert sharding.shard_seeds(x, None) is x
  assert sharding.replicate(x, None) is x
  with pytest.raises(ValueError, match="num_seeds"):
    sharding.seed_mesh(0)
  with pytest.raises(ValueError, match="devices is empty"):
    sharding.seed_mesh(2, devices=[])


@pytest.mark.slow
def test_sharded_run_equals_the_single_device_run_and_resumes_sharded(
    tmp_path, four_cpu_devices_env):
  # 4 CPU devices in a child process (this one has 1): the 4-seed toy run with
  # its seed axis split over them must give the very same history and final
  # state as on one device, keep its state split over 4 devices to the end, and
  # a run directory written sharded must resume onto the 4 devices, each array
  # read from the checkpoint straight onto them (never gathered on one).
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_worker.py"),
                        str(tmp_path / "run")], env=four_cpu_devices_env, check=True,
                       capture_output=True, text=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["device_count"] == 4 and r["mesh"] == 4
  assert r["leaf_devices"] == [4] and r["end_devices"] == [4]
  assert r["resumed_devices"] == [4]
  assert r["read_devices"] == [4]  # read straight onto the 4 devices
  assert r["mesh3"] == 3 and r["mesh6"] == 3
  assert r["sharded"]["spent"] == [200] * 4
  assert r["sharded"] == r["single"] == r["resumed"]
  assert r["max_state_diff"] == 0.0 and r["max_state_diff_resumed"] == 0.0
