"""Run by ``test_data_parallel.py`` in a process with 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``).

Compares the data-parallel sampler, scorer and maximum-likelihood fit of
``banel_jax.runtime.data_parallel`` over the 4 devices with their one-device
counterparts on a tiny Transformer, and prints one JSON line of what the test
checks.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from banel_jax.runtime import data_parallel as dp
from banel_jax.core import mle
from banel_jax.models import transformer as tfm


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def main():
  cfg = tfm.TransformerConfig(num_layers=1, width=16, num_heads=2, max_len=6)
  model = tfm.make_transformer(cfg, score_chunk=None).model
  params = model.init(jax.random.key(0))
  mesh = dp.data_mesh()
  out = {"device_count": jax.device_count(), "mesh": int(mesh.devices.size)}

  x = jax.jit(dp.sampler(model.sample, mesh), static_argnums=2)(
      params, jax.random.key(1), 16)
  out["sample_shape"] = list(x.shape)
  out["sample_devices"] = len(x.sharding.device_set)
  # each device draws its own rows: the four quarters are not copies
  quarters = np.asarray(x).reshape(4, 4, -1)
  out["distinct_quarters"] = len({q.tobytes() for q in quarters})
  out["sample_finite"] = bool(np.all(np.isfinite(np.asarray(model.log_prob(params, x)))))

  score = jax.jit(dp.log_prob(model.log_prob, mesh))
  out["score_diff"] = _max_diff(score(params, x), model.log_prob(params, x))
  x13 = x[:13]  # not a multiple of 4: padded, padding dropped
  s13 = score(params, x13)
  out["score13_shape"] = list(s13.shape)
  out["score13_diff"] = _max_diff(s13, model.log_prob(params, x13))

  # SGD: the step is the gradient itself (Adam would blow up float rounding in
  # the near-zero gradient entries to a whole step)
  tx = optax.sgd(0.1)
  state = train_state.TrainState.create(apply_fn=model.log_prob, params=params, tx=tx)
  w = jnp.linspace(0.0, 2.0, 16)
  key = jax.random.key(2)
  # one step over every sample: the same step as on one device
  one = jax.jit(lambda s, xx, ww, k: mle.fit_weighted_mle(
      s, xx, ww, k, epochs=1, batch_size=16, microbatch_size=2))(state, x, w, key)
  fit = jax.jit(dp.fit_weighted_mle(mesh, epochs=1, batch_size=16,
                                    microbatch_size=2))
  par = fit(state, x, w, key)
  out["fit_param_diff"] = _max_diff(par[0].params, one[0].params)
  out["fit_loss_diff"] = _max_diff(par[1], one[1])
  out["param_change"] = _max_diff(par[0].params, params)
  # weight only on the last device's rows: the step still happens on every
  # device (the state read back is the first device's)
  w0 = jnp.zeros(16).at[12:].set(1.0)
  one0 = mle.fit_weighted_mle(state, x, w0, key, epochs=1, batch_size=16)
  par0 = fit(state, x, w0, key)
  out["fit0_param_diff"] = _max_diff(par0[0].params, one0[0].params)
  # no weight anywhere: no step
  parz = fit(state, x, jnp.zeros(16), key)
  out["zero_weight_step"] = int(parz[0].step)
  out["zero_weight_change"] = _max_diff(parz[0].params, params)
  # several epochs of minibatches run and stay replicated
  fit3 = jax.jit(dp.fit_weighted_mle(mesh, epochs=3, batch_size=8))
  s3, losses = fit3(state, x, w, key)
  out["epochs_losses_shape"] = list(losses.shape)
  out["epochs_steps"] = int(s3.step)
  out["epochs_finite"] = bool(np.all(np.isfinite(np.asarray(losses))))
  # sizes that do not split over the 4 devices are refused with a message
  errors = {}
  for name, call in (
      ("sample", lambda: dp.sampler(model.sample, mesh)(params, key, 10)),
      ("fit_batch", lambda: dp.fit_weighted_mle(mesh, epochs=1, batch_size=10)),
      ("fit_rows", lambda: dp.fit_weighted_mle(mesh, epochs=1, batch_size=8)(
          state, x[:14], w[:14], key)),
  ):
    try:
      call()
      errors[name] = None
    except ValueError as e:
      errors[name] = str(e)
  out["errors"] = errors
  print(json.dumps(out))


if __name__ == "__main__":
  main()
