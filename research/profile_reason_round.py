"""Where one BaNEL round's time goes on the package's reasoning decoder (CPU).

Times, each jitted and warmed up once: drawing the round's m samples, the
failure fit (epochs x m/batch steps), drawing the distillation samples,
scoring them under one region (proposal and failure log-probs), and the
distillation fit. Prints JSON.

  python research/profile_reason_round.py --question wp4 --m 500
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for
from banel_jax.experiments import reason
from banel_jax.models import hf


def timed(name, out, fn, *args):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  out[name] = time.perf_counter() - t
  print(f"{name}: {out[name]:.2f} s (first call {first:.2f} s)", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--question", default="wp4")
  p.add_argument("--m", type=int, default=500)
  p.add_argument("--failure-epochs", type=int, default=20)
  p.add_argument("--failure-batch", type=int, default=50)
  p.add_argument("--distill-samples", type=int, default=4096)
  p.add_argument("--distill-epochs", type=int, default=5)
  p.add_argument("--distill-batch", type=int, default=256)
  p.add_argument("--accept", type=float, default=0.5,
                 help="share of distillation samples kept")
  p.add_argument("--microbatch", default="auto")
  a = p.parse_args()
  mb = a.microbatch if a.microbatch == "auto" else int(a.microbatch)
  config = reason.default_config()
  model_dir = reason.resolve_model_dir(config, None)
  qs = {q.id: q for q in reason.load_questions(
      reason.questions_path(config, model_dir), config.prompt_template)}
  decoder, params = hf.load_pretrained(model_dir)
  tok = hf.load_tokenizer(model_dir)
  setup = reason.setup_question(config, qs[a.question], decoder, tok)
  model = setup.gen.model
  key = jax.random.PRNGKey(0)
  out = {"question": a.question, "backend": jax.default_backend()}

  sample = jax.jit(model.sample, static_argnums=2)
  timed("sample_m_s", out, sample, params, key, a.m)
  timed("sample_distill_s", out, sample, params, key, a.distill_samples)
  x_m = sample(params, key, a.m)
  x_d = sample(params, key, a.distill_samples)
  lp = jax.jit(lambda p1, p2, x: model.log_prob(p1, x) - model.log_prob(p2, x))
  timed("score_one_region_s", out, lp, params, params, x_d)
  state = train_state.TrainState.create(apply_fn=model.log_prob, params=params,
                                        tx=optax.adam(1e-4))

  def fit(epochs, batch, x, w):
    return jax.jit(lambda s, x, w, k: fit_weighted_mle(
        s, x, w, k, epochs=epochs, batch_size=batch,
        microbatch_size=microbatch_size_for(batch, mb))[0])

  f = fit(a.failure_epochs, a.failure_batch, x_m, None)
  timed("failure_fit_s", out, f, state, x_m, jnp.ones(a.m), key)
  w = (jax.random.uniform(key, (a.distill_samples,)) < a.accept).astype(jnp.float32)
  d = jax.jit(lambda s, x, w, k: fit_weighted_mle(
      s, x, w, k, epochs=a.distill_epochs, batch_size=a.distill_batch, pack=True,
      microbatch_size=microbatch_size_for(a.distill_batch, mb))[0])
  timed("distill_fit_s", out, d, state, x_d, w, key)
  out["settings"] = vars(a)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
