"""Where the time of one BaNEL round of the addition attack goes.

Times each part of a distilled BaNEL round at the attack's shapes (the ``full``
config of ``scripts/configs/attack.py``: 500 paid samples, 1,024 calibration
samples, 2,048 distillation samples, batches of 100 and 256), every part jitted
and ``vmap``-ed over ``--seeds`` seeds side by side, as ``attack.py`` runs them:

* ``sample_paid``: the proposal's ``samples_per_round`` samples;
* ``oracle``: the target's greedy answers to all seeds' paid samples (host call);
* ``failure_fit``: the failure model's ``failure_epochs`` epochs;
* ``calibration``: ``calibration_samples`` fresh samples and their log-ratio
  (two log-prob passes), the calibrated threshold's input;
* ``distill_sample``: the ``distill_samples`` distillation samples;
* ``region_test``: one region's rejection test of all of those (two log-prob
  passes). The first region of a round pays it in full; each further one
  scores only the samples no earlier region has rejected
  (:func:`banel_jax.posterior.rejection_mask`), so it pays a share;
* ``distill_fit``: distillation's ``distill_epochs`` epochs.

``region_bank`` times the whole rejection test (``rejection_mask``, the loop
strategy of the attack) on a synthetic bank of ``--region-bank`` regions of
random transformers, each with its threshold at the median log-ratio of the
samples (it rejects about half of them), against the same loop made to score
every sample at every region (one block, ``posterior.LOOP_BLOCKS = 1``); both
masks must agree.

``failure_fit`` and ``distill_fit`` are timed at each ``--train-microbatch``
value (``BanelConfig.train_microbatch``). The JSON also gives the estimated round
time with 1 region and an upper bound with as many regions as the budget's last
round has (every region paying ``region_test`` in full).
The parameters are freshly initialised: the cost of every part depends on the
shapes only (static), not on what the models have learned.

Example:
  python scripts/bench_round.py                      # results/bench_round.json
  python scripts/bench_round.py --seeds 1 --train-microbatch 0 16 32
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.bench_transformer import _median_time  # noqa: E402  (median after a warm-up)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="full", choices=("full", "quick", "tiny"),
                 help="attack config whose shapes are timed (default full; tiny "
                 "is for tests).")
  p.add_argument("--seeds", type=int, default=5,
                 help="seeds side by side under vmap (default 5, as the attack).")
  p.add_argument("--failure-epochs", type=int, default=10,
                 help="failure-model epochs (default 10, the shipped-target runs).")
  p.add_argument("--train-microbatch", type=int, nargs="+", default=[0, 32],
                 help="BanelConfig.train_microbatch values to time the two fits "
                 "at (default 0 32; 0 is one pass per step).")
  p.add_argument("--region-bank", type=int, default=8, metavar="K",
                 help="regions in the synthetic bank of the rejection-test timing "
                 "(default 8; 0 skips it).")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed calls per part after one warm-up; the median is "
                 "reported (default 3).")
  p.add_argument("--out", default="results/bench_round.json", help="JSON output path.")
  return p.parse_args(argv)


def bench_round(exp, n_seeds: int, microbatches, repeats: int) -> dict:
  """Seconds per part of one round (see the module doc)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax.training import train_state

  from banel_jax import make_failure_fitter
  from banel_jax.distill import make_distill_tx
  from banel_jax.mle import fit_weighted_mle, microbatch_size_for
  from banel_jax.models import transformer as tfm
  from banel_jax.posterior import log_ratio
  from banel_jax.tasks import addition

  c, task = exp.banel, exp.task
  model = tfm.make_transformer(task.attacker).model
  seed_keys = jax.random.split(jax.random.key(0), n_seeds)
  params = jax.jit(jax.vmap(model.init))(seed_keys)
  target_params = jax.jit(addition.make_target(task).model.init)(jax.random.key(1))
  oracle = addition.make_oracle(target_params, task)
  sample = jax.jit(jax.vmap(model.sample, in_axes=(0, 0, None)), static_argnums=2)
  ratio = jax.jit(jax.vmap(functools.partial(log_ratio, model)))
  x_paid = sample(params, seed_keys, c.samples_per_round)
  x_distill = sample(params, seed_keys, c.distill_samples)
  x_paid_host = np.asarray(x_paid).reshape(-1, x_paid.shape[-1])
  run = lambda fn: (lambda: jax.block_until_ready(fn()))  # noqa: E731

  out = {
      "sample_paid": _median_time(
          run(lambda: sample(params, seed_keys, c.samples_per_round)), repeats),
      "oracle": _median_time(lambda: oracle(x_paid_host), repeats),
      "calibration": _median_time(run(lambda: ratio(
          params, params, sample(params, seed_keys, c.calibration_samples))), repeats),
      "distill_sample": _median_time(
          run(lambda: sample(params, seed_keys, c.distill_samples)), repeats),
      "region_test": _median_time(run(lambda: ratio(params, params, x_distill)),
                                  repeats),
      "failure_fit": {}, "distill_fit": {}}
  failure_mask = jnp.ones(x_paid.shape[:2], bool)
  ones = jnp.ones(x_distill.shape[:2], jnp.float32)
  tx = make_distill_tx(c)
  proposal = jax.vmap(lambda p: train_state.TrainState.create(
      apply_fn=model.log_prob, params=p, tx=tx))(params)
  for m in microbatches:
    cm = c.replace(train_microbatch=m)
    fit = jax.jit(jax.vmap(make_failure_fitter(model, cm)))
    out["failure_fit"][str(m)] = _median_time(
        run(lambda: fit(params, x_paid, failure_mask, seed_keys)), repeats)
    distill_fit = jax.jit(jax.vmap(functools.partial(
        fit_weighted_mle, epochs=c.distill_epochs, batch_size=c.distill_batch_size,
        pack=c.distill_pack,
        microbatch_size=microbatch_size_for(c.distill_batch_size, m))))
    out["distill_fit"][str(m)] = _median_time(
        run(lambda: distill_fit(proposal, x_distill, ones, seed_keys)), repeats)
  return out


def bench_region_bank(exp, n_seeds: int, n_regions: int, repeats: int) -> dict:
  """Seconds of ``rejection_mask`` (loop) on a synthetic bank (module doc)."""
  import jax
  import jax.numpy as jnp

  from banel_jax import posterior
  from banel_jax.models import transformer as tfm

  c = exp.banel
  model = tfm.make_transformer(exp.task.attacker).model

  def bank_of(key):
    keys = jax.random.split(key, 2 * n_regions + 1)
    p0 = model.init(keys[-1])
    x = model.sample(p0, keys[-1], c.distill_samples)
    bank = posterior.empty_region_bank(p0, capacity=max(n_regions, 1))
    for i in range(n_regions):
      pp, fp = model.init(keys[2 * i]), model.init(keys[2 * i + 1])
      lr = posterior.log_ratio(model, pp, fp, x)
      bank = posterior.add_region(bank, pp, fp, jnp.median(lr))
    return bank, x

  banks, xs = jax.jit(jax.vmap(bank_of))(jax.random.split(jax.random.key(2), n_seeds))
  mask = lambda b, x: posterior.rejection_mask(model, b, x, "loop")  # noqa: E731
  remaining = jax.jit(jax.vmap(mask))
  inside = remaining(banks, xs)
  old_blocks = posterior.LOOP_BLOCKS
  posterior.LOOP_BLOCKS = 1  # traced now: one block, every sample at every region
  try:
    every = jax.jit(jax.vmap(mask))
    if not bool(jnp.all(every(banks, xs) == inside)):
      raise RuntimeError("the two rejection tests disagree")
  finally:
    posterior.LOOP_BLOCKS = old_blocks
  return {"regions": n_regions, "share_inside": float(jnp.mean(inside)),
          "remaining_only": _median_time(
              lambda: remaining(banks, xs).block_until_ready(), repeats),
          "every_sample": _median_time(
              lambda: every(banks, xs).block_until_ready(), repeats)}


def round_estimates(parts: dict, n_regions: int) -> dict:
  """Estimated round seconds per microbatch, with 1 and ``n_regions`` regions."""
  fixed = (parts["sample_paid"] + parts["oracle"] + parts["calibration"]
           + parts["distill_sample"])
  return {m: {"1_region": fixed + parts["failure_fit"][m] + parts["distill_fit"][m]
                         + parts["region_test"],
              f"{n_regions}_regions": fixed + parts["failure_fit"][m]
                                      + parts["distill_fit"][m]
                                      + n_regions * parts["region_test"]}
          for m in parts["failure_fit"]}


def main(argv=None):
  args = parse_args(argv)
  import jax

  from scripts.configs import attack as attack_configs

  if (args.seeds < 1 or args.repeats < 1 or args.region_bank < 0
      or any(m < 0 for m in args.train_microbatch)):
    raise SystemExit("--seeds and --repeats must be >= 1, --train-microbatch and "
                     "--region-bank >= 0")
  exp = attack_configs.CONFIGS[args.config]()
  exp = exp.replace(banel=exp.banel.replace(failure_epochs=args.failure_epochs))
  print(f"[{args.config}] {args.seeds} seeds ...", flush=True)
  parts = bench_round(exp, args.seeds, args.train_microbatch, args.repeats)
  region_bank = (bench_region_bank(exp, args.seeds, args.region_bank, args.repeats)
                 if args.region_bank else None)
  report = {"device": str(jax.devices()[0]), "platform": platform.platform(),
            "jax_version": jax.__version__, "config": args.config,
            "seeds": args.seeds, "repeats": args.repeats,
            "banel": {k: getattr(exp.banel, k) for k in (
                "samples_per_round", "calibration_samples", "failure_epochs",
                "failure_batch_size", "distill_samples", "distill_epochs",
                "distill_batch_size")},
            "seconds": parts, "region_bank": region_bank,
            "round_seconds": round_estimates(parts, exp.banel.num_rounds)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report["seconds"], indent=1))
  print(json.dumps(report["round_seconds"], indent=1))
  print(json.dumps(region_bank, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
