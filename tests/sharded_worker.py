"""Run by ``test_sharding.py`` in a process with 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``).

Runs the 1-D toy with 4 seeds three ways: sharded over the 4 devices, on one
device, and sharded but stopped after one round and resumed from its run
directory. Prints one JSON line with what the test checks.
"""

import json
import sys

import jax
import numpy as np

from banel_jax import BanelConfig, BanelRunner
from banel_jax.runtime import run_dir as run_dir_lib
from banel_jax.runtime import sharding
from banel_jax.tasks.toy1d import Toy1DTask


def _trace(res):
  return {"success_rate": [h.get("success_rate") for h in res.history],
          "nre": [h.get("nre") for h in res.history], "spent": res.nre_spent}


def _device_counts(states):
  """The distinct numbers of devices the leaves of ``states`` are split over."""
  return sorted({len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(states)})


def _max_diff(a, b):
  def host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x, np.float64)

  diffs = [float(np.max(np.abs(host(x) - host(y)))) if np.size(x) else 0.0
           for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  return max(diffs)


def main(run_dir):
  task = Toy1DTask(num_bins=11)
  config = BanelConfig(nre_budget=200, samples_per_round=100, failure_batch_size=50,
                       failure_epochs=3, distill_samples=128, distill_batch_size=64,
                       distill_epochs=2, n_eval=100)
  seeds = (0, 1, 2, 3)

  def runner(shard, **kw):
    return BanelRunner(task.model(), task.prior_params(), task.oracle, config,
                       seeds=seeds, progress=False, shard_seeds=shard, **kw)

  sharded = runner(True)
  leaf_devices = _device_counts(sharded.states)
  res_sharded = sharded.run()
  end_devices = _device_counts(sharded.states)
  res_single = runner(False).run()
  first = runner(True, run_dir=run_dir)
  first.evaluate_start()
  first.step()
  first.close()
  read_devices = []  # devices of the arrays as orbax reads them, before placing
  unflatten = run_dir_lib.unflatten_state

  def spy(flat, like):
    read_devices.extend(len(x.sharding.device_set) for x in flat.values())
    return unflatten(flat, like)

  run_dir_lib.unflatten_state = spy
  resumed = runner(True, run_dir=run_dir)
  run_dir_lib.unflatten_state = unflatten
  resumed_devices = _device_counts(resumed.states)
  res_resumed = resumed.run()
  mesh3 = sharding.seed_mesh(3)
  mesh6 = sharding.seed_mesh(6)
  print(json.dumps({
      "device_count": jax.device_count(),
      "mesh": None if sharded.mesh is None else int(sharded.mesh.devices.size),
      "leaf_devices": leaf_devices,
      "end_devices": end_devices,
      "resumed_devices": resumed_devices,
      "read_devices": sorted(set(read_devices)),
      "mesh3": None if mesh3 is None else int(mesh3.devices.size),
      "mesh6": None if mesh6 is None else int(mesh6.devices.size),
      "sharded": _trace(res_sharded),
      "single": _trace(res_single),
      "resumed": _trace(res_resumed),
      "max_state_diff": _max_diff(res_sharded.states, res_single.states),
      "max_state_diff_resumed": _max_diff(res_sharded.states, res_resumed.states),
  }))


if __name__ == "__main__":
  main(sys.argv[1])
