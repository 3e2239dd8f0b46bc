"""Peak memory of BaNEL at its defaults with a small transformer and 3 seeds.

A user's 27k-parameter Flax model with 3 seeds was killed at about 19 GB
resident when every region slot was tested in one fused call over every
distillation sample and seed. This probe runs the same shape of problem at
``BanelConfig()``'s defaults (``region_strategy="auto"``) for a few rounds and
prints the peak resident memory, the strategy ``auto`` chose and the params.

  python research/default_memory.py [--rounds 8] [--strategy auto|vmap|loop]
"""

import argparse
import json
import resource
import time

import jax
import numpy as np

import banel_jax as bj
from banel_jax.core import posterior
from banel_jax.models import transformer as tfm


class _Bundle:
  def __init__(self, model):
    self.model = model


def _adapter_model(seq_len: int, width: int):
  """A user's causal network: embeddings, a causal running mean, a 2-layer MLP."""
  import flax.linen as nn
  import jax.numpy as jnp
  from banel_jax.models import adapters

  class CausalMLP(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      h = nn.Embed(17, width)(tokens)
      h = jnp.cumsum(h, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[:, None]
      u = nn.relu(nn.Dense(4 * width)(h))
      h = nn.relu(nn.Dense(width)(u)) + h
      return nn.Dense(16)(h)

  module = CausalMLP()
  return _Bundle(adapters.autoregressive_model(
      init=lambda key: module.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"],
      logits=lambda params, tokens: module.apply({"params": params}, tokens),
      seq_len=seq_len, vocab_size=16, bos_id=16))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--strategy", default="auto", choices=["auto", "vmap", "loop"])
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--max-len", type=int, default=24)
  p.add_argument("--mlp-ratio", type=int, default=4)
  p.add_argument("--model", default="transformer", choices=["transformer", "adapter"],
                 help="the package's transformer (chunked scoring), or a user's "
                 "plain causal Flax network through models.adapters")
  args = p.parse_args()
  if args.model == "transformer":
    cfg = tfm.TransformerConfig(vocab_size=16, max_len=args.max_len, num_layers=2,
                                width=args.width, num_heads=4,
                                mlp_ratio=args.mlp_ratio)
    t = tfm.make_transformer(cfg)
  else:
    t = _adapter_model(args.max_len, args.width)
  params = t.model.init(jax.random.key(0))
  n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))

  def oracle(x):  # a rare, structured success: the first two tokens are 7, 7
    x = np.asarray(x)
    return ((x[:, 0] == 7) & (x[:, 1] == 7)).astype(np.float32)

  # the default budget's bank (20 slots), run for a few rounds only
  config = bj.BanelConfig(nre_budget=2000, region_strategy=args.strategy,
                          n_eval=2000, eval_every=args.rounds)
  bank = posterior.empty_region_bank(params, bj.BanelConfig(nre_budget=2000).region_capacity)
  x = t.model.sample(params, jax.random.key(1), config.distill_samples)
  chosen = posterior.auto_region_strategy(t.model, bank, x)
  start = time.perf_counter()
  runner = bj.BanelRunner(t.model, params, oracle, config, seeds=(0, 1, 2),
                          progress=False)
  runner.evaluate_start()
  for _ in range(args.rounds):
    record = runner.step()
  peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(json.dumps({"params": n_params, "max_len": args.max_len, "seeds": 3,
                    "rounds": args.rounds,
                    "strategy": args.strategy,
                    "auto_chooses_at_20_slots_4096_samples": chosen,
                    "peak_rss_gb": round(peak_gb, 2),
                    "wall_s": round(time.perf_counter() - start, 1),
                    "success_rates": record.get("success_rate")}))


if __name__ == "__main__":
  main()
