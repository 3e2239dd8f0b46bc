"""Side-by-side timings of the training-step speed settings (session 28).

Each comparison times two variants of the same jitted call in turns
(``bench_transformer.interleaved_times``: per round, one untimed call and
``--calls`` timed ones of each; medians), at the attack's shapes, one seed:

* ``split_log_prob``: ``mle.fit_weighted_mle`` (one step, AdamW, batch
  ``--batch``, microbatches of ``--microbatch``) on the attacker transformer,
  with its ``log_prob`` a ``SplitLogProb`` (the input tables computed once
  per step) against the same function wrapped so it is not one (the tables
  computed in every microbatch);
* ``reinforce``: one REINFORCE update (500 samples, 4 epochs of 4
  minibatches) with ``PolicyGradientConfig.train_microbatch`` 32 against 0;
* ``unlikelihood``: one unlikelihood update (token form, 500 failures, 256
  anchors, 16 steps) with ``UnlikelihoodConfig.train_microbatch`` 32 against 0.

Both variants of a comparison compute the same thing up to float rounding (the
tests check it); the JSON gives each variant's median seconds and the speed-up.
``--tiny`` shrinks the shapes (for tests).

Example:
  python scripts/bench_microbatch.py          # results/bench_microbatch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.bench_transformer import interleaved_times  # noqa: E402

COMPARISONS = ("split_log_prob", "reinforce", "unlikelihood")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", nargs="+", choices=COMPARISONS, default=list(COMPARISONS),
                 help="comparisons to run (default: all).")
  p.add_argument("--batch", type=int, default=512,
                 help="split_log_prob: sequences per training step (default 512).")
  p.add_argument("--microbatch", type=int, default=32,
                 help="microbatch size of every comparison (default 32).")
  p.add_argument("--rounds", type=int, default=5,
                 help="rounds of turns (default 5).")
  p.add_argument("--calls", type=int, default=2,
                 help="timed calls per turn, after one untimed call (default 2).")
  p.add_argument("--tiny", action="store_true",
                 help="small shapes, seconds in all (for tests).")
  p.add_argument("--out", default="results/bench_microbatch.json",
                 help="JSON output path.")
  return p.parse_args(argv)


def _calls(name: str, args) -> dict:
  """``{variant: zero-arg call}`` of one comparison, compiled and warmed up."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax.training import train_state

  from banel_jax import baselines as B
  from banel_jax.banel import RoundBatch
  from banel_jax.mle import fit_weighted_mle
  from banel_jax.models import transformer as tfm

  cfg = (tfm.TransformerConfig(width=32, num_heads=2, max_len=8) if args.tiny
         else tfm.TransformerConfig())
  tr = tfm.make_transformer(cfg)
  prior = jax.jit(tr.model.init)(jax.random.key(0))
  run = lambda fn: (lambda: jax.block_until_ready(fn()))  # noqa: E731
  if name == "split_log_prob":
    b = args.batch
    x = jax.random.randint(jax.random.key(3), (b, cfg.max_len), 0, 10)
    unsplit = lambda p, xs: tr.model.log_prob(p, xs)  # noqa: E731
    out = {}
    for variant, log_prob in (("split", tr.model.log_prob), ("unsplit", unsplit)):
      state = train_state.TrainState.create(apply_fn=log_prob, params=prior,
                                            tx=optax.adamw(1e-4))
      step = jax.jit(lambda s, xs: fit_weighted_mle(
          s, xs, jnp.ones((b,)), jax.random.key(0), epochs=1, batch_size=b,
          microbatch_size=args.microbatch))
      out[variant] = run(lambda step=step, state=state: step(state, x))
    return out
  m = 40 if args.tiny else 500
  start = jax.jit(tr.model.init)(jax.random.key(1))
  x = tr.model.sample(prior, jax.random.key(2), m)
  batch = RoundBatch(x=x, rewards=jnp.zeros(m), evaluated=jnp.ones(m, bool),
                     log_norm=jnp.zeros(()))
  out = {}
  for mb in (args.microbatch, 0):
    if name == "reinforce":
      method = B.make_reinforce(tr.model, B.PolicyGradientConfig(
          learning_rate=1e-5, kl_weight=0.1, train_microbatch=mb))
    else:
      method = B.make_unlikelihood(
          tr.model, B.UnlikelihoodConfig(
              form="token", learning_rate=1e-5, steps=4 if args.tiny else 16,
              anchor_weight=1.0, anchor_samples=32 if args.tiny else 256,
              train_microbatch=mb),
          token_log_prob=tr.token_log_prob, token_mask=B.token_id_mask(range(10)))
    state = method.init(jax.random.key(0), prior)
    if name == "reinforce":  # away from the prior: the KL term gives gradients
      state = state.replace(policy=state.policy.replace(params=start))
    update = jax.jit(method.update)
    out[f"microbatch_{mb}"] = run(
        lambda update=update, state=state: update(state, batch, jax.random.key(3)))
  return out


def main(argv=None):
  args = parse_args(argv)
  if min(args.batch, args.microbatch, args.rounds, args.calls) < 1:
    raise SystemExit("--batch, --microbatch, --rounds and --calls must be >= 1")
  if args.batch % args.microbatch:
    raise SystemExit(f"--microbatch {args.microbatch} must divide --batch {args.batch}")
  import jax
  report = {"device": str(jax.devices()[0]), "platform": platform.platform(),
            "jax_version": jax.__version__, "tiny": args.tiny,
            "batch": args.batch, "microbatch": args.microbatch,
            "rounds": args.rounds, "calls": args.calls, "seconds": {},
            "speedup": {}}
  for name in args.only:
    print(f"[{name}] ...", flush=True)
    calls = _calls(name, args)
    times = interleaved_times(calls, args.rounds, args.calls)
    fast, slow = list(times)  # the setting first, its baseline second
    report["seconds"][name] = times
    report["speedup"][name] = times[slow] / times[fast]
    print(f"  {fast} {times[fast]:.3f} s, {slow} {times[slow]:.3f} s: "
          f"{report['speedup'][name]:.2f}x", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
