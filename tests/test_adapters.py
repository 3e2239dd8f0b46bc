"""A user's own Flax module wrapped by ``autoregressive_model``."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from banel_jax.models.adapters import autoregressive_model


class _CausalLM(nn.Module):
  vocab: int = 3

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(self.vocab + 1, 8)(tokens)
    h = jnp.cumsum(h, axis=1)
    return nn.Dense(self.vocab)(jnp.tanh(nn.Dense(16)(h)))


def _model(seq_len=2):
  module = _CausalLM()
  return autoregressive_model(
      init=lambda k: module.init(k, jnp.zeros((1, seq_len), jnp.int32))["params"],
      logits=lambda p, t: 3.0 * module.apply({"params": p}, t),
      seq_len=seq_len, vocab_size=3, bos_id=3)


def test_log_prob_normalises_and_samples_follow_it():
  model = _model()
  params = model.init(jax.random.key(0))
  seqs = np.array(list(itertools.product(range(3), repeat=2)), np.int32)
  p = np.exp(np.asarray(model.log_prob(params, seqs), np.float64))
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
  n = 20_000
  x = np.asarray(jax.jit(model.sample, static_argnums=2)(params, jax.random.key(1), n))
  counts = np.array([np.sum(np.all(x == s, axis=1)) for s in seqs])
  assert counts.sum() == n
  _, pval = stats.chisquare(counts, n * p / p.sum())
  assert pval > 1e-3, (counts, n * p)


def test_out_of_vocabulary_has_zero_probability():
  model = _model()
  params = model.init(jax.random.key(0))
  lp = model.log_prob(params, jnp.array([[0, 5], [1, 2]], jnp.int32))
  assert lp[0] == -jnp.inf and np.isfinite(lp[1])
